package cache_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/outpost-oci/outpost/cache"
	"github.com/outpost-oci/outpost/test/testenv"
)

// slowBlobs slows the upstream's blob bodies to chunk bytes per pause.
func (u *upstreamServer) slowBlobs(chunk int, pause time.Duration) {
	u.setWrap(func(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
		if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
			return w
		}
		return testenv.TrickleWriter{ResponseWriter: w, Chunk: chunk, Pause: pause, Done: r.Context().Done()}
	})
}

func read(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Beyond the download slots, a request waits briefly and is then answered
// 429 with Retry-After; once a slot is free it goes through.
func TestFillLimitsAnswer429(t *testing.T) {
	up := newUpstreamServer(t, false)
	a, b := randomImage(t, 400_000, 1), randomImage(t, 1000, 1)
	up.push("acme/a", "1", a)
	up.push("acme/b", "1", b)
	e := newEnv(t, envOptions{fills: cache.FillLimits{Max: 1, PerUpstream: 1, Queue: 200 * time.Millisecond},
		upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/a/manifests/1")
	e.get("GET", "/v2/acme/b/manifests/1")
	up.slowBlobs(8<<10, 20*time.Millisecond)
	resp, err := e.client.Get(e.base + "/v2/acme/a/blobs/" + layerOf(t, a, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first download runs", func() bool { return e.counter("outpost_fills_in_flight", nil) == 1 })
	start := time.Now()
	status, h, body := e.get("GET", "/v2/acme/b/blobs/"+layerOf(t, b, 0).String())
	if status != http.StatusTooManyRequests || errorCode(body) != "TOOMANYREQUESTS" || h.Get("Retry-After") == "" {
		t.Fatalf("second download beyond the limit: %d %v %s", status, h, body)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("answered 429 after %v, without queueing", waited)
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(read(t, resp))); got != layerOf(t, a, 0) {
		t.Fatal("first blob corrupted")
	}
	if status, _, _ := e.get("GET", "/v2/acme/b/blobs/"+layerOf(t, b, 0).String()); status != 200 {
		t.Errorf("once the slot is free: %d", status)
	}
	if e.counter("outpost_fills_refused_total", map[string]string{"reason": "busy"}) != 1 {
		t.Error("the refusal was not counted")
	}
}

// A download nobody follows any more is cancelled after the grace period
// (unless it is nearly done) and nothing is stored.
func TestAbandonedFillIsCancelled(t *testing.T) {
	up := newUpstreamServer(t, false)
	big, small := randomImage(t, 40<<20, 1), randomImage(t, 1<<20, 1)
	up.push("acme/big", "1", big)
	up.push("acme/small", "1", small)
	e := newEnv(t, envOptions{fills: cache.FillLimits{Abandon: 200 * time.Millisecond},
		upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/big/manifests/1")
	e.get("GET", "/v2/acme/small/manifests/1")
	up.slowBlobs(64<<10, 10*time.Millisecond)

	leave := func(repo string, d v1.Hash) {
		resp, err := e.client.Get(e.base + "/v2/" + repo + "/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		io.ReadFull(resp.Body, make([]byte, 100_000))
		resp.Body.Close()
		e.client.CloseIdleConnections()
	}
	leave("acme/big", layerOf(t, big, 0))
	waitFor(t, "the abandoned download is cancelled", func() bool { return e.counter("outpost_fills_abandoned_total", nil) == 1 })
	if e.store.HasBlob(layerOf(t, big, 0)) {
		t.Error("an abandoned download was stored")
	}
	// 1 MiB is close to done from the start: it is finished.
	leave("acme/small", layerOf(t, small, 0))
	waitFor(t, "the nearly done download is stored", func() bool { return e.store.HasBlob(layerOf(t, small, 0)) })
	if e.counter("outpost_fills_abandoned_total", nil) != 1 {
		t.Error("a nearly done download was cancelled")
	}
}

// One download per digest, but a failure that belongs to another
// repository (its upstream has no such blob there) does not fail this
// one's request: it gets its own attempt.
func TestOtherRepositorysFailureIsNotOurs(t *testing.T) {
	up := newUpstreamServer(t, false)
	img := randomImage(t, 50_000, 1)
	up.push("acme/app", "1", img)
	d := layerOf(t, img, 0)
	e := newEnv(t, envOptions{upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/app/manifests/1") // links the layer to acme/app
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/acme/private/blobs/") {
			time.Sleep(300 * time.Millisecond)
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return true
		}
		return false
	})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if status, _, _ := e.get("GET", "/v2/acme/private/blobs/"+d.String()); status != 404 {
			t.Errorf("private: %d", status)
		}
	}()
	waitFor(t, "the private repository's download runs", func() bool { return e.counter("outpost_fills_in_flight", nil) == 1 })
	status, _, body := e.get("GET", "/v2/acme/app/blobs/"+d.String())
	wg.Wait()
	if got, _, _ := v1.SHA256(bytes.NewReader(body)); status != 200 || got != d {
		t.Fatalf("acme/app after acme/private's 404: %d %s", status, got)
	}
	if e.counter("outpost_fill_waiters_total", nil) < 1 {
		t.Error("acme/app did not join the download in progress: the test proves nothing")
	}
}

// A blob is served under a repository only if the repository references it
// or upstream confirms it has it there: not under another registry's name,
// and not offline when nothing can confirm.
func TestBlobScopedToRepository(t *testing.T) {
	hub, other := newUpstreamServer(t, false), newUpstreamServer(t, false)
	img := randomImage(t, 10_000, 1)
	hub.push("acme/app", "1", img)
	d := layerOf(t, img, 0)
	e := newEnv(t, envOptions{upstreams: map[string]*upstreamServer{"docker.io": hub, "ghcr.io": other}})
	e.get("GET", "/v2/acme/app/manifests/1")
	if status, _, _ := e.get("GET", "/v2/acme/app/blobs/"+d.String()); status != 200 {
		t.Fatal("pull through the repository that has it")
	}
	status, _, body := e.get("GET", "/v2/ghcr.io/acme/app/blobs/"+d.String())
	if status != 404 || errorCode(body) != "BLOB_UNKNOWN" {
		t.Errorf("blob under another registry that lacks it: %d %s", status, body[:min(len(body), 200)])
	}
	if other.count("HEAD blobs") != 1 {
		t.Errorf("the other registry was not asked (%v)", other.counts)
	}
	// Same registry, another repository that has it: confirmed, then linked.
	if status, _, _ := e.get("GET", "/v2/acme/fork/blobs/"+d.String()); status != 200 {
		t.Errorf("repository confirmed upstream: %d", status)
	}
	if !e.store.Linked("docker.io/acme/fork", d) {
		t.Error("the confirmation was not recorded")
	}
	hub.srv.Close()
	if status, _, _ := e.get("GET", "/v2/acme/third/blobs/"+d.String()); status != 404 {
		t.Errorf("offline, unconfirmed: %d", status)
	}
	if status, _, _ := e.get("GET", "/v2/acme/fork/blobs/"+d.String()); status != 200 {
		t.Errorf("offline, confirmed before: %d", status)
	}
}

// Connections beyond the limits are answered with an OCI error and closed.
func TestConnectionLimits(t *testing.T) {
	up := newUpstreamServer(t, false)
	e := newEnv(t, envOptions{conns: cache.ConnLimits{PerIP: 2}, upstreams: map[string]*upstreamServer{"docker.io": up}})
	addr := strings.TrimPrefix(e.base, "http://")
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	waitFor(t, "both connections are accepted", func() bool { return e.counter("outpost_http_connections", nil) == 2 })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n") // a request the refusal leaves unread
	answer, _ := io.ReadAll(c)
	c.Close()
	if !bytes.HasPrefix(answer, []byte("HTTP/1.1 429")) || !bytes.Contains(answer, []byte("TOOMANYREQUESTS")) {
		t.Fatalf("third connection: %q", answer)
	}
	held[0].Close()
	waitFor(t, "the closed connection is released", func() bool { return e.counter("outpost_http_connections", nil) == 1 })
	if status, _, _ := e.get("GET", "/v2/"); status != 200 {
		t.Errorf("after one closed: %d", status)
	}
}

// A client that stops reading is dropped after the write timeout.
func TestStalledClientIsDropped(t *testing.T) {
	up := newUpstreamServer(t, false)
	img := randomImage(t, 16<<20, 1)
	up.push("acme/app", "1", img)
	d := layerOf(t, img, 0)
	e := newEnv(t, envOptions{conns: cache.ConnLimits{WriteTimeout: 300 * time.Millisecond}, upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/app/manifests/1")
	e.get("GET", "/v2/acme/app/blobs/"+d.String())
	e.client.CloseIdleConnections()
	waitFor(t, "idle connections close", func() bool { return e.counter("outpost_http_connections", nil) == 0 })
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	io.WriteString(c, "GET /v2/acme/app/blobs/"+d.String()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the request is being answered", func() bool { return e.counter("outpost_http_connections", nil) == 1 })
	waitFor(t, "the stalled client is dropped", func() bool { return e.counter("outpost_http_connections", nil) == 0 })
}

// Requests waiting for a download slot join a download of their digest
// that starts meanwhile, instead of waiting for a slot of their own.
func TestQueuedRequestJoinsTheDownloadOfItsDigest(t *testing.T) {
	up := newUpstreamServer(t, false)
	a, b := randomImage(t, 300_000, 1), randomImage(t, 300_000, 1)
	up.push("acme/a", "1", a)
	up.push("acme/b", "1", b)
	e := newEnv(t, envOptions{fills: cache.FillLimits{Max: 1, PerUpstream: 1, Queue: 1500 * time.Millisecond},
		upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/a/manifests/1")
	e.get("GET", "/v2/acme/b/manifests/1")
	up.slowBlobs(16<<10, 50*time.Millisecond) // about a second per blob
	var wg sync.WaitGroup
	get := func(repo string, d v1.Hash) {
		defer wg.Done()
		status, _, body := e.get("GET", "/v2/"+repo+"/blobs/"+d.String())
		if got, _, _ := v1.SHA256(bytes.NewReader(body)); status != 200 || got != d {
			t.Errorf("%s: %d %s", repo, status, body[:min(len(body), 200)])
		}
	}
	wg.Add(3)
	go get("acme/a", layerOf(t, a, 0))
	waitFor(t, "the first download runs", func() bool { return e.counter("outpost_fills_in_flight", nil) == 1 })
	go get("acme/b", layerOf(t, b, 0))
	go get("acme/b", layerOf(t, b, 0))
	wg.Wait()
}

// A client resuming a blob that is still downloading (Range: bytes=N-)
// is streamed from the download at once, not after it.
func TestRangeOnADownloadInProgressStreams(t *testing.T) {
	up := newUpstreamServer(t, false)
	img := randomImage(t, 500_000, 1)
	up.push("acme/app", "1", img)
	d := layerOf(t, img, 0)
	rc, _ := mustLayer(t, img).Uncompressed()
	blob, _ := io.ReadAll(rc)
	e := newEnv(t, envOptions{upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/app/manifests/1")
	up.slowBlobs(16<<10, 50*time.Millisecond) // about 1.5 s
	first := make(chan struct{})
	go func() {
		defer close(first)
		e.get("GET", "/v2/acme/app/blobs/"+d.String())
	}()
	waitFor(t, "the download runs", func() bool { return e.counter("outpost_fills_in_flight", nil) == 1 })
	req, _ := http.NewRequest("GET", e.base+"/v2/acme/app/blobs/"+d.String(), nil)
	req.Header.Set("Range", "bytes=1000-")
	start := time.Now()
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	headers := time.Since(start)
	body := read(t, resp)
	<-first
	if resp.StatusCode != 206 || !bytes.Equal(body, blob[1000:]) || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-%d/%d", len(blob)-1, len(blob)) {
		t.Fatalf("range: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), len(body))
	}
	if headers > 700*time.Millisecond {
		t.Errorf("the range waited %v for the download", headers)
	}
}

// A slow client that keeps reading is not cut by the write timeout, on
// the sendfile path of a stored blob.
func TestSlowReaderIsNotDropped(t *testing.T) {
	up := newUpstreamServer(t, false)
	img := randomImage(t, 10<<20, 1) // more than the kernel's socket buffers hold
	up.push("acme/app", "1", img)
	d := layerOf(t, img, 0)
	e := newEnv(t, envOptions{conns: cache.ConnLimits{WriteTimeout: 300 * time.Millisecond}, upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/app/manifests/1")
	e.get("GET", "/v2/acme/app/blobs/"+d.String()) // stored
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(16 << 10)
	io.WriteString(c, "GET /v2/acme/app/blobs/"+d.String()+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	var got int64
	buf := make([]byte, 64<<10)
	for { // about 2 MB/s: a 1 MiB sendfile chunk takes longer than the timeout
		n, err := c.Read(buf)
		got += int64(n)
		if err != nil {
			break
		}
		time.Sleep(30 * time.Millisecond)
	}
	if got < 10<<20 {
		t.Fatalf("a slow reader was cut after %d bytes", got)
	}
}

func mustLayer(t *testing.T, img v1.Image) v1.Layer {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return layers[0]
}
