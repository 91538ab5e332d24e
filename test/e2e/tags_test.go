package e2e

import (
	"testing"

	"github.com/outpost-oci/outpost/test/testenv"
)

// TestTagTTL moves a tag upstream after it was cached. With tagTTL 0 the
// next request revalidates and sees the new digest; with a long TTL the
// cached digest is served without asking the upstream. Either way the old
// content still pulls by digest.
func TestTagTTL(t *testing.T) {
	requireOutpost(t)
	cases := []struct {
		ttl         string
		revalidates bool
	}{
		{"0s", true},
		{"1h", false},
	}
	for _, c := range cases {
		t.Run("tagTTL="+c.ttl, func(t *testing.T) {
			e := newEnv(t, envOptions{TagTTL: c.ttl})
			fx := e.Fx
			const tagPath = "/v2/library/alpine/manifests/3"
			e.getManifest(t, tagPath, fx.Alpine)

			pushImage(t, e.Hub.Registry.Addr, "library/alpine", "3", fx.Busybox)
			gets := e.Hub.Front.Count("GET", tagPath) + e.Hub.Front.Count("HEAD", tagPath)
			want := fx.Alpine
			if c.revalidates {
				want = fx.Busybox
			}
			e.getManifest(t, tagPath, want)
			resp, _, err := testenv.Fetch("HEAD", e.Mirror.URL("/v2/alpine/manifests/3?ns=docker.io"), map[string]string{"Accept": testenv.ManifestAccept})
			if err != nil || resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.Digest {
				t.Errorf("HEAD alpine:3 via ns after the upstream retag: err=%v resp=%v, want digest %s", err, resp, want.Digest)
			}
			after := e.Hub.Front.Count("GET", tagPath) + e.Hub.Front.Count("HEAD", tagPath)
			if !c.revalidates && after != gets {
				t.Errorf("tagTTL %s: the upstream was asked about the tag again (%d requests, was %d)", c.ttl, after, gets)
			}
			e.getManifest(t, "/v2/library/alpine/manifests/"+fx.Alpine.Digest, fx.Alpine)
		})
	}
}
