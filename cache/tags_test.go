package cache_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/outpost-oci/outpost/mirror"
)

// On a slow uplink a stale tag is served within the revalidation deadline,
// the revalidation goes on in the background, its answer is kept, and the
// upstream is never marked down.
func TestSlowRevalidationServesStaleThenCatchesUp(t *testing.T) {
	up := newUpstreamServer(t, false)
	first := up.push("acme/app", "latest", randomImage(t, 100, 1))
	e := newEnv(t, envOptions{tagTTL: 0, upstreams: map[string]*upstreamServer{"docker.io": up}})
	digest := func() (string, time.Duration) {
		start := time.Now()
		_, h, _ := e.get("GET", "/v2/acme/app/manifests/latest")
		return h.Get("Docker-Content-Digest"), time.Since(start)
	}
	if d, _ := digest(); d != first.String() {
		t.Fatalf("first pull: %s", d)
	}
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			time.Sleep(time.Second) // a satellite round trip
		}
		return false
	})
	second := up.push("acme/app", "latest", randomImage(t, 100, 1))
	for i := 0; i < 3; i++ {
		d, took := digest()
		if d != first.String() || took > 800*time.Millisecond {
			t.Fatalf("stale serve %d: %s after %v", i, d, took)
		}
	}
	waitFor(t, "the background revalidation brings the new digest", func() bool {
		d, _ := digest()
		return d == second.String()
	})
	if e.ups[0].Down() {
		t.Error("a slow upstream was marked down")
	}
}

// A confirmation time in the future (a Pi without a real-time clock that
// booted at 1970, then got NTP, or the other way round) is stale.
func TestFutureConfirmationIsStale(t *testing.T) {
	up := newUpstreamServer(t, false)
	up.push("acme/app", "1", randomImage(t, 100, 1))
	e := newEnv(t, envOptions{tagTTL: time.Hour, upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/app/manifests/1")
	up.reset()
	e.get("GET", "/v2/acme/app/manifests/1")
	if up.count("HEAD manifests") != 0 {
		t.Fatal("a fresh tag was revalidated")
	}
	past := time.Now().Add(-48 * time.Hour) // the clock was set back
	e.now.Store(&past)
	e.get("GET", "/v2/acme/app/manifests/1")
	if up.count("HEAD manifests") != 1 {
		t.Errorf("a confirmation in the future was taken as fresh (%d HEADs)", up.count("HEAD manifests"))
	}
}

// A tag is deleted only when every URL of the upstream says it is gone; a
// 404 from the first URL while the second cannot answer keeps it.
func TestTagKeptUnlessEveryURLSaysGone(t *testing.T) {
	regional, internet := newUpstreamServer(t, false), newUpstreamServer(t, false)
	d := internet.push("acme/app", "1", randomImage(t, 100, 1))
	e := newEnvURLs(t, []*upstreamServer{regional, internet})
	if _, h, _ := e.get("GET", "/v2/acme/app/manifests/1"); h.Get("Docker-Content-Digest") != d.String() {
		t.Fatal("cold pull through a regional box that lacks the image")
	}
	internet.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return true
	})
	if status, h, _ := e.get("GET", "/v2/acme/app/manifests/1"); status != 200 || h.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("regional 404, internet 503: %d", status)
	}
	internet.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return true
		}
		return false
	})
	waitFor(t, "the tag goes once every URL says it is gone", func() bool {
		status, _, _ := e.get("GET", "/v2/acme/app/manifests/1")
		return status == 404
	})
}

// newEnvURLs runs a cache whose docker.io upstream has one URL per server,
// tried in order, with tags always revalidated.
func newEnvURLs(t *testing.T, servers []*upstreamServer) *env {
	t.Helper()
	e := newEnv(t, envOptions{upstreams: map[string]*upstreamServer{}})
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.srv.URL)
	}
	u, err := mirror.New(mirror.Options{Name: "docker.io", URLs: urls, Insecure: true, RetryMax: 1,
		RetryWaitMin: 10 * time.Millisecond, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.setUpstream(u, 0)
	return e
}

// The referrers API answers from upstream's API, or from its tag schema
// where it has none, merged with what is cached; nothing known is an empty
// index, never a 404.
func TestReferrersWithAndWithoutTheAPI(t *testing.T) {
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "api", false: "tag schema"}[api], func(t *testing.T) {
			up := newUpstreamServer(t, api)
			img := randomImage(t, 100, 1)
			subject := up.push("acme/app", "1", img)
			mt, _ := img.MediaType()
			size, _ := img.Size()
			sig := mutate.Subject(mutate.ConfigMediaType(mutate.MediaType(randomImage(t, 50, 1), types.OCIManifestSchema1),
				"application/vnd.example.sig"), v1.Descriptor{MediaType: mt, Size: size, Digest: subject}).(v1.Image)
			sigDigest, _ := sig.Digest()
			sigSize, _ := sig.Size()
			if api {
				up.push("acme/app", "sig", sig)
			} else {
				up.push("acme/app", "sig", sig)
				up.push("acme/app", "sha256-"+subject.Hex, mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
					mutate.IndexAddendum{Add: sig, Descriptor: v1.Descriptor{ArtifactType: "application/vnd.example.sig", Size: sigSize, Digest: sigDigest}}))
			}
			e := newEnv(t, envOptions{tagTTL: time.Hour, upstreams: map[string]*upstreamServer{"docker.io": up}})
			list := func(d v1.Hash) (int, []v1.Descriptor) {
				status, h, body := e.get("GET", "/v2/acme/app/referrers/"+d.String())
				var index v1.IndexManifest
				if json.Unmarshal(body, &index) != nil || h.Get("Content-Type") != string(types.OCIImageIndex) {
					t.Fatalf("not an index: %s", body)
				}
				return status, index.Manifests
			}
			if status, descs := list(subject); status != 200 || len(descs) != 1 || descs[0].Digest != sigDigest {
				t.Errorf("referrers: %d %+v", status, descs)
			}
			if status, descs := list(sigDigest); status != 200 || len(descs) != 0 {
				t.Errorf("nothing known: %d %+v", status, descs)
			}
		})
	}
}
