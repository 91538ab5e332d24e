package badday

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// An uplink with a 1.5 s round trip is slow, not dead: a stale tag is
// served within the revalidation deadline, the upstream is never marked
// down, and cold pulls go through.
func TestSlowUplink(t *testing.T) {
	reg := startRegistry(t)
	first := push(t, reg.addr(), "acme/app", "1", image(t, 64<<10, 2))
	push(t, reg.addr(), "acme/other", "1", image(t, 64<<10, 1))
	link := startLatencyProxy(t, reg.addr(), 750*time.Millisecond) // 1.5 s round trip
	dir := t.TempDir()
	o := testenv.StartOutpost(t, filepath.Join(dir, "outpost"), testenv.OutpostConfig{
		Admin: true, Level: "info",
		Upstreams: []testenv.Upstream{{Name: "docker.io", URL: "http://" + link.addr(), Default: true,
			TagTTL: "0s", RevalidateTimeout: "1s", RequestTimeout: "30s"}},
	})
	start := time.Now()
	if err := pull(o.URL(""), "acme/app", "1"); err != nil {
		t.Fatalf("cold pull over the slow link: %v", err)
	}
	t.Logf("cold pull over a 1.5 s round trip took %s", time.Since(start).Round(time.Millisecond))

	for i := 0; i < 5; i++ {
		start := time.Now()
		resp, _, err := testenv.Fetch("GET", o.URL("/v2/acme/app/manifests/1"), map[string]string{"Accept": testenv.ManifestAccept})
		took := time.Since(start)
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != first.String() {
			t.Fatalf("stale tag %d: %v %v", i, resp, err)
		}
		if took > 1500*time.Millisecond {
			t.Errorf("stale tag %d took %s; the revalidation deadline is 1s", i, took)
		}
	}
	time.Sleep(3 * time.Second) // let the background revalidations finish
	if up := metric(t, o.Admin, "outpost_upstream_up", map[string]string{"upstream": "docker.io"}); up != 1 {
		t.Errorf("outpost_upstream_up = %v: a slow upstream was marked down", up)
	}
	if log := testenv.Tail(o.Log, 1000); strings.Contains(log, "marked down") {
		t.Errorf("a slow upstream was marked down:\n%s", log)
	}
	start = time.Now()
	if err := pull(o.URL(""), "acme/other", "1"); err != nil {
		t.Fatalf("second cold pull: %v", err)
	}
	t.Logf("a second cold pull took %s", time.Since(start).Round(time.Millisecond))
}
