// Command outpost is the Outpost OCI pull-through cache. This file is the
// composition root: the only place that reads flags and config files, builds
// the logger, and wires store, upstreams and front end together.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/outpost-oci/outpost/cache"
	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/mirror"
	"github.com/outpost-oci/outpost/store"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Stamped by the Makefile through -ldflags.
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "outpost:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "outpost",
		Usage: "an OCI image pull-through cache for the edge",
		Commands: []*cli.Command{
			{
				Name:  "serve",
				Usage: "serve the cache (on the embedded default config unless --config is given)",
				Flags: []cli.Flag{&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE` (YAML)", EnvVars: []string{"OUTPOST_CONFIG"}}},
				Action: func(c *cli.Context) error {
					cfg, err := loadConfig(c.String("config"))
					if err != nil {
						return err
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					ln, err := net.Listen("tcp", cfg.HTTP.Address)
					if err != nil {
						return err
					}
					return serve(ctx, cfg, ln)
				},
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(*cli.Context) error {
					fmt.Printf("outpost %s (commit %s, %s, %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
					return nil
				},
			},
		},
	}
}

func loadConfig(path string) (*configs.Config, error) {
	if path == "" {
		return configs.Default(), nil
	}
	return configs.Load(path)
}

func newLogger(cfg configs.Log) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.Level)) // validated by configs
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" || (cfg.Format != "text" && !term.IsTerminal(int(os.Stderr.Fd()))) {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// serve runs the cache on ln until ctx ends.
func serve(ctx context.Context, cfg *configs.Config, ln net.Listener) error {
	defer ln.Close()
	log := newLogger(cfg.Log)
	st, err := store.Open(cfg.Storage.Root, store.Options{Logger: log.With("component", "store")})
	if err != nil {
		return err
	}
	defer st.Close()

	var ups []cache.UpstreamOptions
	for _, u := range cfg.Upstreams {
		auth, err := mirror.Credentials(u.Name, u.Username, u.Password, u.DockerConfig)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		up, err := mirror.New(mirror.Options{
			Name: u.Name, URLs: u.URLs, Insecure: u.Insecure, CAFile: u.CAFile, Auth: auth,
			RevalidateTimeout: u.RevalidateTimeout.D(),
			UserAgent:         "outpost/" + version,
			Logger:            log.With("component", "mirror"),
		})
		if err != nil {
			return err
		}
		defer up.Close()
		ups = append(ups, cache.UpstreamOptions{Upstream: up, TagTTL: u.TagTTL.D(), Default: u.Default})
	}
	c, err := cache.New(cache.Options{Store: st, Upstreams: ups, Logger: log.With("component", "cache")})
	if err != nil {
		return err
	}
	defer c.Close()

	log.Info("serving", "address", ln.Addr().String(), "storage", cfg.Storage.Root, "upstreams", len(ups), "version", version)
	err = c.Serve(ctx, ln)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	log.Info("stopped")
	return err
}
