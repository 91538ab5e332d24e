package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Everything pulled once keeps pulling, quickly, when the upstream is gone
// (connection refused) or silently dead (accepts, never answers). Until
// the upstream is marked down a stale tag waits at most the revalidation
// deadline; once it is, cached content comes back at once, and what was
// never pulled fails within the request budget (a half-open attempt).
func TestOfflineServesEverythingCached(t *testing.T) {
	for _, mode := range []string{"stopped", "hanging"} {
		t.Run(mode, func(t *testing.T) {
			up := newUpstream(t)
			idx := multiArch(t)
			up.push("library/alpine", "3", idx)
			up.push("acme/tool", "v1", randomImage(t, 4096, 2))
			// tagTTL 0: every tag request asks upstream.
			o := startOutpost(t, config(up, "0s")+"    requestTimeout: 2s\n    probeInterval: 200ms\n", "")

			refs := []string{"alpine:3", "acme/tool:v1"}
			manifest, _ := idx.IndexManifest()
			for _, m := range manifest.Manifests {
				refs = append(refs, "alpine@"+m.Digest.String())
			}
			for _, r := range refs {
				pullAll(t, o.ref(t, r))
			}

			switch mode {
			case "stopped":
				up.srv.Close()
			case "hanging":
				up.setFault(faultHang)
			}
			pulls := func(limit time.Duration) {
				t.Helper()
				for _, r := range refs {
					start := time.Now()
					pullAll(t, o.ref(t, r))
					if took := time.Since(start); took > limit {
						t.Errorf("pulling %s offline took %v (limit %v)", r, took, limit)
					}
				}
			}
			// Before the upstream is marked down: the revalidation deadline
			// (1s) at most, per tag request.
			deadline := time.Now().Add(20 * time.Second)
			for !o.app.upstreams[0].Down() && time.Now().Before(deadline) {
				pulls(1500 * time.Millisecond)
			}
			if !o.app.upstreams[0].Down() {
				t.Fatal("the upstream was never marked down")
			}
			for round := 0; round < 2; round++ {
				pulls(200 * time.Millisecond)
			}
			// A HEAD by tag (containerd's resolve) carries the digest offline too.
			status, h, _ := o.get(t, http.MethodHead, "/v2/library/alpine/manifests/3?ns=docker.io", "Accept", acceptAll)
			if status != 200 || h.Get("Docker-Content-Digest") == "" {
				t.Errorf("offline HEAD: %d %v", status, h)
			}
			// What was never pulled fails with the spec's 404 within the
			// request budget (2s), not a hang.
			start := time.Now()
			status, _, body := o.get(t, http.MethodGet, "/v2/acme/other/manifests/1")
			if status != http.StatusNotFound || !strings.Contains(string(body), "MANIFEST_UNKNOWN") || time.Since(start) > 3*time.Second {
				t.Errorf("uncached while down: %d %s after %v", status, body, time.Since(start))
			}
		})
	}
}

// Tags are served from the store within tagTTL; after it a HEAD decides, and
// only a moved tag is fetched again. A definite 404 wins over the cache.
func TestTagRevalidation(t *testing.T) {
	up := newUpstream(t)
	first := up.push("acme/app", "latest", randomImage(t, 100, 1))
	o := startOutpost(t, config(up, "0s"), "")
	digestOf := func() string {
		_, h, _ := o.get(t, http.MethodGet, "/v2/acme/app/manifests/latest")
		return h.Get("Docker-Content-Digest")
	}
	if got := digestOf(); got != first.String() {
		t.Fatalf("first pull: %s", got)
	}
	up.resetCounts()
	if got := digestOf(); got != first.String() || up.requests("HEAD manifests") != 1 || up.requests("GET manifests") != 0 {
		t.Fatalf("unchanged tag: %s, upstream %v", got, up.counts)
	}
	second := up.push("acme/app", "latest", randomImage(t, 100, 1))
	up.resetCounts()
	if got := digestOf(); got != second.String() || up.requests("GET manifests") != 1 {
		t.Fatalf("moved tag: got %s want %s, upstream %v", got, second, up.counts)
	}
	// Upstream deletes the tag: a definite answer.
	req, _ := http.NewRequest(http.MethodDelete, up.srv.URL+"/v2/acme/app/manifests/latest", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete upstream: %v %v", resp, err)
	}
	if status, _, body := o.get(t, http.MethodGet, "/v2/acme/app/manifests/latest"); status != 404 {
		t.Errorf("tag deleted upstream: %d %s", status, body)
	}
	// By digest, content stays servable forever.
	if status, _, _ := o.get(t, http.MethodGet, "/v2/acme/app/manifests/"+first.String()); status != 200 {
		t.Errorf("by digest after tag removal: %d", status)
	}
}

func TestFreshTagDoesNotAskUpstream(t *testing.T) {
	up := newUpstream(t)
	up.push("acme/app", "1", randomImage(t, 100, 1))
	o := startOutpost(t, config(up, "1h"), "")
	if _, err := remote.Head(o.ref(t, "acme/app:1")); err != nil {
		t.Fatal(err)
	}
	up.resetCounts()
	for i := 0; i < 5; i++ {
		if _, err := remote.Get(o.ref(t, "acme/app:1")); err != nil {
			t.Fatal(err)
		}
	}
	if n := up.requests("HEAD manifests") + up.requests("GET manifests"); n != 0 {
		t.Errorf("fresh tag asked upstream %d times", n)
	}
}

// A restart keeps the cache: content pulled before is served by the new
// process with the upstream gone.
func TestRestartKeepsCache(t *testing.T) {
	up := newUpstream(t)
	up.push("acme/app", "1", randomImage(t, 5000, 2))
	root := t.TempDir()
	o := startOutpost(t, config(up, "0s"), root)
	pullAll(t, o.ref(t, "acme/app:1"))
	o.stop()
	checkStore(t, root)
	up.srv.Close()
	o2 := startOutpost(t, config(up, "0s"), root)
	pullAll(t, o2.ref(t, "acme/app:1"))
}
