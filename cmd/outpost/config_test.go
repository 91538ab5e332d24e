package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A bad config stops `outpost serve` with a message naming file and field.
func TestServeRefusesBadConfig(t *testing.T) {
	cases := map[string]struct{ yaml, want string }{
		"unknown key": {"http:\n  adress: 127.0.0.1:5000\n", `unknown field "adress"`},
		"bad url":     {"upstreams:\n  - name: docker.io\n    urls: [ftp://x]\n", "upstreams[0].urls[0]"},
		"bad ttl":     {"upstreams:\n  - name: docker.io\n    urls: [https://x.io]\n    tagTTL: soon\n", "upstreams[0].tagTTL"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			os.WriteFile(path, []byte(c.yaml), 0o600)
			err := newCLI().Run([]string{"outpost", "serve", "--config", path})
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to name %s and %q", err, path, c.want)
			}
		})
	}
}
