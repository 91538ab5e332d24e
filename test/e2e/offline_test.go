package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// Latency bounds for offline serving. revalidateTimeout is 2s, so tag
// requests may wait for it until an upstream is marked down (after three
// connection-level failures: refused at once, or no answer within the 4s
// request budget here); from then on cached content must come back at once.
const (
	offlineFirstBound = 3 * time.Second
	offlineFastBound  = 500 * time.Millisecond
	// offlineGrace is added to a bound to get the point where a request is
	// abandoned (and the test stopped), so a hanging product fails fast.
	offlineGrace = 2 * time.Second
	// recoveryBound is how soon a returning upstream must be used again.
	// The contract does not fix it; 30 s is a generous bound for an appliance.
	recoveryBound = 30 * time.Second
	// downBound is how soon both upstreams must be marked down: three
	// failures of the 4 s request budget, one tag's revalidation at a time.
	downBound = 60 * time.Second
)

// TestOffline warms the cache, makes both upstreams unusable, and checks that
// every cached tag and digest still pulls, quickly. tagTTL is 0 so that
// every tag request tries to revalidate.
func TestOffline(t *testing.T) {
	requireOutpost(t)
	crane := testenv.RequireTool(t, "crane")

	for _, mode := range []string{"stopped", "blackhole"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, envOptions{TagTTL: "0s", RevalidateTimeout: "2s", RequestTimeout: "4s"})
			e.warm(t)
			var holes []*blackhole
			for _, u := range []*upstream{e.Hub, e.GHCR} {
				addr := u.Addr()
				u.Stop()
				if err := waitClosed(addr); err != nil {
					t.Fatal(err)
				}
				if mode == "blackhole" {
					holes = append(holes, startBlackhole(t, addr))
				}
			}

			// Rounds over every tag, GET as crane/skopeo do and HEAD as
			// containerd does. They may wait for the revalidation deadline
			// while the upstreams are being marked down; the last round, once
			// both are, may not.
			down := func() bool {
				log := testenv.Tail(e.Mirror.Log, 10000)
				return strings.Count(log, "upstream marked down") >= 2
			}
			downBy := time.Now().Add(downBound)
			for round := 1; ; round++ {
				last := down()
				if !last && time.Now().After(downBy) {
					t.Fatalf("the upstreams were not both marked down within %s", downBound)
				}
				bound := offlineFirstBound
				if last {
					bound = offlineFastBound
				}
				for _, r := range e.Fx.tags() {
					path := "/v2/" + mirrorRepo(r) + "/manifests/" + r.Tag
					start := time.Now()
					e.getManifestWithin(t, bound+offlineGrace, path, r.M)
					checkElapsed(t, fmt.Sprintf("round %d: GET %s", round, path), time.Since(start), bound)

					path = "/v2/" + r.Repo + "/manifests/" + r.Tag + "?ns=" + r.Upstream
					start = time.Now()
					resp, _, err := testenv.FetchWithin(bound+offlineGrace, "HEAD", e.Mirror.URL(path), map[string]string{"Accept": testenv.ManifestAccept})
					checkElapsed(t, fmt.Sprintf("round %d: HEAD %s", round, path), time.Since(start), bound)
					switch {
					case err != nil:
						t.Fatalf("HEAD %s: %v", path, err)
					case resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != r.M.Digest:
						t.Errorf("HEAD %s: status %d, Docker-Content-Digest %q, want 200 %s",
							path, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), r.M.Digest)
					}
				}
				if last {
					break
				}
			}

			// Full pulls with crane, by tag and by every digest.
			env := testenv.Env("DOCKER_CONFIG=" + t.TempDir())
			out, pulls := t.TempDir(), 0
			pull := func(ref string, m *manifest) {
				t.Helper()
				pulls++
				dir := filepath.Join(out, fmt.Sprint(pulls))
				res := testenv.Run(offlineFirstBound+offlineGrace, env, crane, "pull", "--format", "oci", ref, dir)
				if res.Err != nil {
					t.Fatalf("offline crane pull %s: %s", ref, res)
				}
				checkElapsed(t, "crane pull "+ref, res.Elapsed, offlineFirstBound)
				checkOCILayout(t, dir, m)
			}
			for _, r := range e.Fx.tags() {
				repo := e.Mirror.Addr + "/" + mirrorRepo(r)
				pull(repo+":"+r.Tag, r.M)
				for _, m := range r.M.all() {
					pull(repo+"@"+m.Digest, m)
				}
			}

			for _, h := range holes {
				if h.Accepted() == 0 {
					t.Errorf("outpost never tried the blackholed upstream: tagTTL 0 should revalidate every tag request")
				}
				h.Close()
			}

			// The upstream comes back: being marked down must not be permanent.
			// A tag that was never cached has to come through within the bound.
			pushImage(t, e.Hub.Registry.Addr, "library/alpine", "edge", e.Fx.Busybox)
			e.Hub.Restart(t)
			const path = "/v2/library/alpine/manifests/edge"
			start := time.Now()
			for {
				resp, _, err := testenv.FetchWithin(5*time.Second, "GET", e.Mirror.URL(path), map[string]string{"Accept": testenv.ManifestAccept})
				if err == nil && resp.StatusCode == 200 {
					t.Logf("upstream used again %s after it came back", time.Since(start).Round(time.Millisecond))
					break
				}
				if time.Since(start) > recoveryBound {
					t.Fatalf("GET %s still fails %s after the upstream came back: err=%v resp=%v", path, recoveryBound, err, resp)
				}
				time.Sleep(250 * time.Millisecond)
			}
			e.getManifest(t, path, e.Fx.Busybox)
		})
	}
}

func checkElapsed(t *testing.T, what string, elapsed, bound time.Duration) {
	t.Helper()
	if elapsed > 100*time.Millisecond {
		t.Logf("%s took %s", what, elapsed.Round(time.Millisecond))
	}
	if elapsed > bound {
		t.Errorf("%s took %s, want <= %s", what, elapsed.Round(time.Millisecond), bound)
	}
}
