package badday

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// An upstream that redirects blob downloads to a service on another
// loopback address is refused (that service never sees a request, its
// presigned query never reaches the log), and one that answers a manifest
// request with a captive portal's page gets a 502; neither is stored.
func TestHostileUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		testenv.Missing(t, "cannot listen on 127.0.0.2: %v", err)
	}
	var probed atomic.Int32
	internal := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probed.Add(1)
		io.WriteString(w, "internal admin page")
	})}}
	internal.Start()
	defer internal.Close()

	reg := startRegistry(t)
	img := image(t, 32<<10, 1)
	push(t, reg.addr(), "acme/app", "1", img)
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	reg.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, internal.URL+"/steal?X-Amz-Signature=TOPSECRET", http.StatusTemporaryRedirect)
			return true
		case strings.Contains(r.URL.Path, "/manifests/portal"):
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html>Welcome aboard! Accept the terms to use the Wi-Fi.</html>")
			return true
		}
		return false
	})
	o := testenv.StartOutpost(t, filepath.Join(t.TempDir(), "outpost"), testenv.OutpostConfig{Level: "debug",
		Upstreams: []testenv.Upstream{{Name: "docker.io", URL: reg.srv.URL, Default: true}}})
	if resp, _, err := testenv.Fetch("GET", o.URL("/v2/acme/app/manifests/1"), map[string]string{"Accept": testenv.ManifestAccept}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("manifest: %v %v", resp, err)
	}
	resp, body, err := testenv.Fetch("GET", o.URL("/v2/acme/app/blobs/"+layer.String()), nil)
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("blob redirected to 127.0.0.2: %v %v %s", resp, err, body)
	}
	resp, body, err = testenv.Fetch("GET", o.URL("/v2/acme/app/manifests/portal"), map[string]string{"Accept": testenv.ManifestAccept})
	if err != nil || resp.StatusCode != http.StatusBadGateway || bytes.Contains(body, []byte("Welcome")) {
		t.Errorf("captive portal: %v %v %s", resp, err, body)
	}
	if probed.Load() != 0 {
		t.Errorf("the internal service got %d requests", probed.Load())
	}
	if log := testenv.Tail(o.Log, 5000); strings.Contains(log, "TOPSECRET") {
		t.Error("the redirect target's query is in the log")
	}
	_, body, _ = testenv.Fetch("GET", o.URL("/v2/acme/app/tags/list"), nil)
	if bytes.Contains(body, []byte("portal")) {
		t.Errorf("the portal's answer was stored as a tag: %s", body)
	}
}

// A blob is served under a repository only if that repository has it:
// the CNCF distribution registry keeps blobs per repository, and Outpost
// asks it before serving a cached blob under another name.
func TestBlobScopingAgainstDistribution(t *testing.T) {
	dir := t.TempDir()
	up := testenv.StartRegistry(t, filepath.Join(dir, "registry"), testenv.RegistryOptions{})
	img := image(t, 32<<10, 1)
	push(t, up.Addr, "acme/public", "1", img)
	push(t, up.Addr, "acme/mirror", "1", img)
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	o := testenv.StartOutpost(t, filepath.Join(dir, "outpost"), testenv.OutpostConfig{
		Upstreams: []testenv.Upstream{{Name: "docker.io", URL: up.URL(""), Default: true}}})
	if err := pull(o.URL(""), "acme/public", "1"); err != nil {
		t.Fatal(err)
	}
	for repo, want := range map[string]int{"acme/private": 404, "acme/mirror": 200, "acme/public": 200} {
		resp, _, err := testenv.Fetch("GET", o.URL("/v2/"+repo+"/blobs/"+layer.String()), nil)
		if err != nil || resp.StatusCode != want {
			t.Errorf("the cached layer under %s: %v %v, want %d", repo, resp, err, want)
		}
	}
}

// A two-URL upstream whose first URL fails (503) is served by the second,
// and the first is used again once it recovers and its cool-down is over.
func TestFailoverAndFailback(t *testing.T) {
	first, second := startRegistry(t), startRegistry(t)
	for _, r := range []*registry{first, second} {
		push(t, r.addr(), "acme/app", "1", image(t, 32<<10, 1))
	}
	var failing atomic.Bool
	var hits atomic.Int32
	failing.Store(true)
	first.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v2/" {
			hits.Add(1)
		}
		if failing.Load() {
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE"}]}`, http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	o := testenv.StartOutpost(t, filepath.Join(t.TempDir(), "outpost"), testenv.OutpostConfig{
		Upstreams: []testenv.Upstream{{Name: "docker.io", URLs: []string{first.srv.URL, second.srv.URL}, Default: true,
			TagTTL: "0s", Extra: "probeInterval: 200ms\nfailback: 1s"}}})
	if err := pull(o.URL(""), "acme/app", "1"); err != nil {
		t.Fatalf("pull while the first URL fails: %v", err)
	}
	failing.Store(false)
	time.Sleep(1500 * time.Millisecond) // the cool-down of a URL that answered 503
	hits.Store(0)
	for i := 0; i < 3; i++ {
		if resp, _, err := testenv.Fetch("GET", o.URL("/v2/acme/app/manifests/1"), map[string]string{"Accept": testenv.ManifestAccept}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("after recovery: %v %v", resp, err)
		}
	}
	if hits.Load() == 0 {
		t.Error("the recovered first URL is not used again")
	}
}
