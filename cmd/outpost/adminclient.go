package main

import (
	"context"
	"io"
	"net/http"
	"strings"

	"github.com/urfave/cli/v2"
)

// configFlag is --config, as every command that reads the config takes it.
func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE` (YAML)", EnvVars: []string{"OUTPOST_CONFIG"}}
}

// askServe sends one request to the running instance's admin listener (for
// the commands that find the store held by `outpost serve`) and returns its
// answer, read whole (at most 256 MiB).
func askServe(ctx context.Context, admin, method, path string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+adminHost(admin)+path, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	return resp, b, err
}

// adminHost turns a listen address into one to connect to.
func adminHost(addr string) string {
	if strings.HasPrefix(addr, ":") {
		return "127.0.0.1" + addr
	}
	return addr
}
