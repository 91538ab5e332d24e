package cache_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/outpost-oci/outpost/cache"
	"github.com/outpost-oci/outpost/mirror"
	"github.com/outpost-oci/outpost/store"
	"github.com/outpost-oci/outpost/test/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// The cache's own tests: its real handler behind a real listener, a real
// store on a temporary directory, and real upstreams (go-containerregistry's
// in-process registry reached through mirror), with faults injected by
// wrapping the registry. Every test must leave no goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Badger's and ristretto's process-wide workers, started once.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
		// fasthttp's process-wide Date header ticker, and the cleaner of a
		// stopped server's worker pool, which notices the stop on its next
		// 10 s tick.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}

// fault decides what an upstream does with a request; handled reports
// that it answered itself.
type fault func(w http.ResponseWriter, r *http.Request) (handled bool)

// upstreamServer is a registry behind a fault switch and request counter.
type upstreamServer struct {
	t      *testing.T
	srv    *httptest.Server
	fault  atomic.Pointer[fault]
	wrap   atomic.Pointer[wrapper]
	mu     sync.Mutex
	counts map[string]int // "GET manifests", "HEAD blobs", ...
}

func newUpstreamServer(t *testing.T, referrers bool) *upstreamServer {
	t.Helper()
	u := &upstreamServer{t: t, counts: map[string]int{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(referrers))
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" {
			kind := "other"
			for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
				if strings.Contains(r.URL.Path, "/"+k+"/") {
					kind = k
				}
			}
			u.mu.Lock()
			u.counts[r.Method+" "+kind]++
			u.mu.Unlock()
		}
		if f := u.fault.Load(); f != nil && (*f)(w, r) {
			return
		}
		if wr := u.wrap.Load(); wr != nil {
			w = (*wr)(w, r)
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// wrapper replaces the response writer the registry answers through.
type wrapper func(http.ResponseWriter, *http.Request) http.ResponseWriter

func (u *upstreamServer) setWrap(f wrapper) { u.wrap.Store(&f) }

func (u *upstreamServer) setFault(f fault) {
	if f == nil {
		u.fault.Store(nil)
		return
	}
	u.fault.Store(&f)
}

func (u *upstreamServer) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key]
}

func (u *upstreamServer) reset() {
	u.mu.Lock()
	u.counts = map[string]int{}
	u.mu.Unlock()
}

// push writes img (an image or index) as repo:tag, without counting.
func (u *upstreamServer) push(repo, tag string, img any) v1.Hash {
	u.t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(u.srv.URL, "http://")+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		u.t.Fatal(err)
	}
	old := u.fault.Swap(nil)
	defer u.fault.Store(old)
	u.mu.Lock()
	saved := u.counts
	u.counts = map[string]int{}
	u.mu.Unlock()
	defer func() { u.mu.Lock(); u.counts = saved; u.mu.Unlock() }()
	var d v1.Hash
	switch x := img.(type) {
	case v1.Image:
		err = remote.Write(ref, x)
		d, _ = x.Digest()
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, x)
		d, _ = x.Digest()
	}
	if err != nil {
		u.t.Fatal(err)
	}
	return d
}

func randomImage(t *testing.T, size int64, layers int) v1.Image {
	return testenv.RandomImage(t, size, layers)
}

func layerOf(t *testing.T, img v1.Image, i int) v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[i].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// env is a running cache in front of upstream servers.
type env struct {
	t       *testing.T
	store   *store.Store
	cache   *cache.Cache
	ups     []*mirror.Upstream
	metrics *prometheus.Registry
	base    string
	client  *http.Client
	now     atomic.Pointer[time.Time] // nil: the real clock
}

type envOptions struct {
	fills     cache.FillLimits
	conns     cache.ConnLimits
	tagTTL    time.Duration
	mirror    mirror.Options // timings applied to every upstream
	reserve   int64
	upstreams map[string]*upstreamServer // by registry name; "docker.io" is the default
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, metrics: prometheus.NewRegistry()}
	st, err := store.Open(t.TempDir(), store.Options{Reserve: o.reserve})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	var ups []cache.UpstreamOptions
	for name, srv := range o.upstreams {
		mo := o.mirror
		mo.Name, mo.URLs, mo.Insecure = name, []string{srv.srv.URL}, true
		if mo.RetryWaitMin == 0 {
			mo.RetryWaitMin = 10 * time.Millisecond
		}
		if mo.RequestTimeout == 0 {
			mo.RequestTimeout = 5 * time.Second
		}
		u, err := mirror.New(mo)
		if err != nil {
			t.Fatal(err)
		}
		e.ups = append(e.ups, u)
		ups = append(ups, cache.UpstreamOptions{Upstream: u, TagTTL: o.tagTTL, RevalidateTimeout: 300 * time.Millisecond,
			Default: name == "docker.io"})
	}
	c, err := cache.New(cache.Options{Store: st, Upstreams: ups, Fills: o.fills, Conns: o.conns, Registerer: e.metrics,
		Now: func() time.Time {
			if p := e.now.Load(); p != nil {
				return *p
			}
			return time.Now()
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.cache = c
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.base = "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, ln) }()
	e.client = &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	t.Cleanup(func() {
		e.client.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		c.Close()
		for _, u := range e.ups {
			u.Close()
		}
		if err := st.CheckInvariants(); err != nil {
			t.Errorf("store invariants: %v", err)
		}
		st.Close()
	})
	return e
}

// get sends a request and returns status, headers and the whole body.
func (e *env) get(method, path string, header ...string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// counter reads a metric's value (the sum over label values matching).
func (e *env) counter(name string, labels map[string]string) float64 {
	e.t.Helper()
	families, err := e.metrics.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// setUpstream makes u the cache's only, default upstream.
func (e *env) setUpstream(u *mirror.Upstream, tagTTL time.Duration) {
	e.t.Helper()
	e.ups = append(e.ups, u)
	if err := e.cache.SetUpstreams([]cache.UpstreamOptions{{Upstream: u, TagTTL: tagTTL,
		RevalidateTimeout: 300 * time.Millisecond, Default: true}}); err != nil {
		e.t.Fatal(err)
	}
}
