package mirror

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder counts requests to a registry and can make it fail.
type recorder struct {
	mu      sync.Mutex
	queries []string // raw queries of /v2/<repo>/... requests
	hits    atomic.Int32
	status  atomic.Int32 // answer everything but /v2/ with this, if set
}

func (r *recorder) wrap(reg http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v2/" {
			r.hits.Add(1)
			r.mu.Lock()
			r.queries = append(r.queries, req.Method+" "+req.URL.Path+"?"+req.URL.RawQuery)
			r.mu.Unlock()
			if s := r.status.Load(); s != 0 {
				http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"test"}]}`, int(s))
				return
			}
		}
		reg.ServeHTTP(w, req)
	})
}

func newRecorded(t *testing.T) (*recorder, *httptest.Server) {
	r := &recorder{}
	return r, registryWith(t, r.wrap)
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.queries = nil
	r.mu.Unlock()
	r.hits.Store(0)
}

// A URL that answers 404 is not final while another URL remains: the chain
// site → regional Outpost → internet works because an offline regional box
// answers 404 for what it lacks. It is asked first again on the next
// request (a 404 is no failure).
func TestNotFoundFailsOverToTheNextURL(t *testing.T) {
	regional, rsrv := newRecorded(t)
	internet, isrv := newRecorded(t)
	seed(t, isrv, "acme/app")
	internet.reset()
	u := newTestUpstream(t, Options{URLs: []string{rsrv.URL, isrv.URL}, Insecure: true})
	for i := 0; i < 2; i++ {
		if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil {
			t.Fatal(err)
		}
	}
	if regional.hits.Load() != 2 || internet.hits.Load() != 2 {
		t.Errorf("regional asked %d times, internet %d; want 2 and 2", regional.hits.Load(), internet.hits.Load())
	}
	// Present in the regional box too: it answers, the internet is not asked.
	seed(t, rsrv, "acme/app")
	internet.hits.Store(0)
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil || internet.hits.Load() != 0 {
		t.Errorf("both have it: %v, internet asked %d times", err, internet.hits.Load())
	}
}

// A thing is gone only when every URL says so; a URL that cannot answer
// makes the answer "unavailable", so a cached tag is kept.
func TestNotFoundOnlyWhenEveryURLAgrees(t *testing.T) {
	_, a := newRecorded(t)
	_, b := newRecorded(t)
	u := newTestUpstream(t, Options{URLs: []string{a.URL, b.URL}, Insecure: true})
	_, err := u.Head(context.Background(), "acme/app", "1")
	var ue *Error
	if !errors.As(err, &ue) || !ue.NotFound() {
		t.Fatalf("both 404: %v", err)
	}
	dead := newTestUpstream(t, Options{URLs: []string{a.URL, "http://" + closedPort(t)}, Insecure: true, RetryMax: 1})
	_, err = dead.Head(context.Background(), "acme/app", "1")
	if !errors.As(err, &ue) || ue.NotFound() || !ue.Unavailable() {
		t.Fatalf("404 and unreachable: %v (NotFound %v)", err, ue != nil && ue.NotFound())
	}
}

// After failing over from a URL that answers 503, the preferred URL is
// passed over for the failback period, then used first again.
func TestFailbackAfterCoolDown(t *testing.T) {
	regional, rsrv := newRecorded(t)
	internet, isrv := newRecorded(t)
	seed(t, rsrv, "acme/app")
	seed(t, isrv, "acme/app")
	regional.reset()
	internet.reset()
	u := newTestUpstream(t, Options{URLs: []string{rsrv.URL, isrv.URL}, Insecure: true, RetryMax: 1,
		ProbeInterval: 50 * time.Millisecond, Failback: 500 * time.Millisecond})
	regional.status.Store(http.StatusServiceUnavailable)
	for i := 0; i < 3; i++ {
		if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := regional.hits.Load(); n > 2 {
		t.Errorf("a failing preferred URL was asked %d times in 3 requests; it should be passed over", n)
	}
	if u.Down() {
		t.Fatal("an upstream with a working URL was marked down")
	}
	regional.status.Store(0)
	time.Sleep(200 * time.Millisecond)
	internet.reset()
	u.Manifest(context.Background(), "acme/app", "1")
	if internet.hits.Load() == 0 {
		t.Error("a URL that answered 503 was tried first again before its cool-down ended")
	}
	time.Sleep(400 * time.Millisecond)
	internet.reset()
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil || internet.hits.Load() != 0 {
		t.Errorf("after the cool-down: %v, internet asked %d times", err, internet.hits.Load())
	}
}

// A preferred URL that could not be reached is restored as soon as the
// probe sees it answer, long before the failback period ends.
func TestProbeRestoresAnUnreachableURL(t *testing.T) {
	addr := closedPort(t)
	internet, isrv := newRecorded(t)
	seed(t, isrv, "acme/app")
	u := newTestUpstream(t, Options{URLs: []string{"http://" + addr, isrv.URL}, Insecure: true, RetryMax: 1,
		ProbeInterval: 50 * time.Millisecond, Failback: time.Hour})
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil {
		t.Fatal(err)
	}
	if u.endpoints[0].coolUntil.Load() == 0 {
		t.Fatal("the unreachable URL is not passed over")
	}
	serveRegistryOn(t, addr)
	waitUntil(t, "the probe restores the preferred URL", func() bool { return u.endpoints[0].coolUntil.Load() == 0 })
	internet.reset()
	u.Manifest(context.Background(), "acme/app", "1") // the restored URL lacks the image: 404, then the next URL
	if internet.hits.Load() != 1 {
		t.Errorf("internet asked %d times, want 1 (after the preferred URL's 404)", internet.hits.Load())
	}
}

// A URL that accepts connections but never answers gets only its share of
// the request budget: the next URL is still tried, and the silent one is
// passed over afterwards.
func TestSilentURLFailsOver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never answered
		}
	}()
	_, isrv := newRecorded(t)
	seed(t, isrv, "acme/app")
	u := newTestUpstream(t, Options{URLs: []string{"http://" + ln.Addr().String(), isrv.URL}, Insecure: true,
		RequestTimeout: 2 * time.Second})
	start := time.Now()
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil {
		t.Fatalf("silent first URL: %v after %v", err, time.Since(start))
	}
	if u.endpoints[0].coolUntil.Load() == 0 {
		t.Error("the silent URL is not passed over")
	}
	start = time.Now()
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil || time.Since(start) > 500*time.Millisecond {
		t.Errorf("second request: %v after %v", err, time.Since(start))
	}
}

// Every request names the upstream with ns=, so that a chained Outpost
// files it under that registry; tag pages keep it.
func TestRequestsCarryNamespace(t *testing.T) {
	rec, srv := newRecorded(t)
	img := seed(t, srv, "acme/app")
	rec.reset()
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	ctx := context.Background()
	if _, _, err := u.Manifest(ctx, "acme/app", "1"); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	body, _, err := u.Blob(ctx, "acme/app", d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	body.Close()
	if _, err := u.BlobHead(ctx, "acme/app", d); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Tags(ctx, "acme/app"); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.queries) < 4 {
		t.Fatalf("requests: %v", rec.queries)
	}
	for _, q := range rec.queries {
		if !strings.Contains(q, "ns=registry.test") {
			t.Errorf("request without ns: %s", q)
		}
	}
}
