package e2e

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// TestBadConfig checks that `outpost serve` refuses invalid configurations
// with a non-zero exit and a message naming the file and the field.
func TestBadConfig(t *testing.T) {
	bin := requireOutpost(t)
	dir := t.TempDir()
	valid := testenv.OutpostConfig{
		Addr:  testenv.FreeAddr(t),
		Root:  filepath.Join(dir, "data"),
		Level: "info",
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URL: "http://" + testenv.DeadAddr, Default: true, TagTTL: "5m"},
		},
	}.YAML()

	cases := []struct {
		name    string
		old     string // replaced in the valid config
		new     string
		mention []string
	}{
		{"unknown upstream field", "    insecure: true\n", "    insecure: true\n    urlz: [\"http://127.0.0.1:9\"]\n", []string{"unknown field", "urlz"}},
		{"unknown top-level field", "http:\n", "htttp:\n  address: 127.0.0.1:9\nhttp:\n", []string{"unknown field", "htttp"}},
		{"invalid url", `["http://127.0.0.1:9"]`, `["://127.0.0.1:9"]`, []string{"upstreams[0].urls[0]"}},
		{"invalid duration", "tagTTL: 5m", "tagTTL: soon", []string{"upstreams[0].tagTTL"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(valid, c.old) {
				t.Fatalf("test bug: %q not in config:\n%s", c.old, valid)
			}
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".yaml")
			testenv.WriteFile(t, path, strings.Replace(valid, c.old, c.new, 1))
			res := testenv.Run(20*time.Second, testenv.Env(), bin, "serve", "--config", path)
			var exit *exec.ExitError
			if !errors.As(res.Err, &exit) || exit.ExitCode() <= 0 {
				t.Fatalf("outpost serve with a bad config: want a non-zero exit, got %s", res)
			}
			msg := string(res.Stdout) + string(res.Stderr)
			for _, want := range append([]string{path}, c.mention...) {
				if !strings.Contains(msg, want) {
					t.Errorf("error output does not mention %q:\n%s", want, msg)
				}
			}
		})
	}
}

// TestServeLifecycle starts outpost with an unreachable upstream (an edge
// appliance boots offline), checks that it becomes ready, and that SIGTERM
// stops it cleanly.
func TestServeLifecycle(t *testing.T) {
	requireOutpost(t)
	dir := t.TempDir()
	m := testenv.StartOutpost(t, dir, testenv.OutpostConfig{
		Addr:  testenv.FreeAddr(t),
		Root:  filepath.Join(dir, "data"),
		Level: "info",
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URL: "http://" + testenv.DeadAddr, Default: true},
		},
	})
	path := "/v2/library/alpine/manifests/3"
	resp, body, err := testenv.Fetch("GET", m.URL(path), map[string]string{"Accept": testenv.ManifestAccept})
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode < 400 {
		t.Errorf("GET %s of an uncached image with the upstream down: status %d, want an error status: %.200s", path, resp.StatusCode, body)
	}

	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("outpost did not exit within 10s of SIGTERM")
	}
	if m.Err() != nil {
		t.Errorf("outpost exit after SIGTERM: %v, want status 0", m.Err())
	}
	if err := testenv.PingV2(m.Addr); err == nil {
		t.Errorf("%s still answers after outpost exited", m.Addr)
	}
}
