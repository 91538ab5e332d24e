package badday

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/outpost-oci/outpost/test/testenv"
)

// Many clients asking for many cold blobs from an upstream that trickles:
// Outpost downloads at most its limit at once, answers the rest 429 with
// Retry-After after a short wait, stays small, and serves everything once
// the upstream recovers.
func TestManyColdBlobsFromATricklingUpstream(t *testing.T) {
	reg := startRegistry(t)
	const blobs = 30
	var digests []v1.Hash
	for i := 0; i < blobs; i++ {
		img := image(t, 256<<10, 1)
		push(t, reg.addr(), fmt.Sprintf("acme/app%d", i), "1", img)
		layers, _ := img.Layers()
		d, _ := layers[0].Digest()
		digests = append(digests, d)
	}
	o := testenv.StartOutpost(t, filepath.Join(t.TempDir(), "outpost"), testenv.OutpostConfig{
		Admin: true, Extra: "fills:\n  max: 4\n  perUpstream: 4\n  queue: 1s\n",
		Upstreams: []testenv.Upstream{{Name: "docker.io", URL: reg.srv.URL, Default: true}},
	})
	for i := 0; i < blobs; i++ { // manifests first, as a client pulls
		if resp, _, err := testenv.Fetch("GET", o.URL(fmt.Sprintf("/v2/acme/app%d/manifests/1", i)), map[string]string{"Accept": testenv.ManifestAccept}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("manifest %d: %v %v", i, resp, err)
		}
	}
	reg.setFault(trickleFault(reg, 16<<10, 100*time.Millisecond))

	var wg sync.WaitGroup
	statuses := make(chan int, blobs)
	for i, d := range digests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _, err := testenv.FetchWithin(60*time.Second, "GET", o.URL(fmt.Sprintf("/v2/acme/app%d/blobs/%s", i, d)), nil)
			switch {
			case err != nil:
				t.Errorf("blob %d: %v", i, err)
			case resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "":
				t.Errorf("blob %d: 429 without Retry-After", i)
			}
			if resp != nil {
				statuses <- resp.StatusCode
			}
		}()
	}
	time.Sleep(3 * time.Second)
	_, peak := rss(t, o.Pid())
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	t.Logf("statuses %v, at most %d upstream downloads at once, peak RSS %d MiB", count, reg.maxSeen.Load(), peak>>20)
	if max := reg.maxSeen.Load(); max > 4 {
		t.Errorf("%d downloads from upstream at once, limit 4", max)
	}
	if count[200] < 4 || count[429] == 0 || count[200]+count[429] != blobs {
		t.Errorf("statuses %v: want some 200s and the rest 429", count)
	}
	if peak > 96<<20 {
		t.Errorf("peak RSS %d MiB", peak>>20)
	}
	reg.setFault(nil)
	for i, d := range digests {
		resp, body, err := testenv.Fetch("GET", o.URL(fmt.Sprintf("/v2/acme/app%d/blobs/%s", i, d)), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("blob %d after the upstream recovered: %v %v", i, resp, err)
		}
		if got, _, _ := v1.SHA256(strings.NewReader(string(body))); got != d {
			t.Fatalf("blob %d: wrong bytes", i)
		}
	}
}

// trickleFault makes reg send blob bodies chunk bytes per pause.
func trickleFault(reg *registry, chunk int, pause time.Duration) func(http.ResponseWriter, *http.Request) bool {
	inner := reg.handler()
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		inner.ServeHTTP(testenv.TrickleWriter{ResponseWriter: w, Chunk: chunk, Pause: pause, Done: r.Context().Done()}, r)
		return true
	}
}
