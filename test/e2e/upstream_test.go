package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// upstream is a distribution registry with a recording reverse proxy in
// front of it. Outpost is pointed at the proxy, so the test sees every
// request Outpost makes upstream and can slow down or corrupt blobs.
type upstream struct {
	Name     string          // the upstream name in outpost's config, e.g. docker.io
	Registry *testenv.Server // the registry itself (used for seeding)
	Front    *frontProxy
}

// Addr is what Outpost is configured to talk to.
func (u *upstream) Addr() string { return u.Front.Addr }

// URL is the upstream URL for Outpost's config.
func (u *upstream) URL() string { return "http://" + u.Front.Addr }

// Stop makes the upstream unreachable: connections to its address are
// refused. The registry behind it keeps running, for Restart.
func (u *upstream) Stop() { u.Front.Stop() }

// Restart serves the upstream again on the same address (with a fresh request log).
func (u *upstream) Restart(t *testing.T) {
	t.Helper()
	u.Front = startFrontProxy(t, u.Registry.Addr, u.Front.Addr)
}

// startUpstream starts a registry plus its front proxy and seeds it.
func startUpstream(t *testing.T, dir, name string, seed []taggedRef) *upstream {
	t.Helper()
	reg := testenv.StartRegistry(t, dir, testenv.RegistryOptions{})
	for _, r := range seed {
		if r.Upstream == name {
			pushImage(t, reg.Addr, r.Repo, r.Tag, r.M)
		}
	}
	return &upstream{Name: name, Registry: reg, Front: startFrontProxy(t, reg.Addr, "127.0.0.1:0")}
}

// upstreamRequest is one request Outpost made to an upstream.
type upstreamRequest struct {
	Method, Path, Query, Range string
}

func (r upstreamRequest) String() string {
	s := r.Method + " " + r.Path
	if r.Query != "" {
		s += "?" + r.Query
	}
	if r.Range != "" {
		s += " Range:" + r.Range
	}
	return s
}

// frontProxy is a recording reverse proxy in front of a registry.
type frontProxy struct {
	Addr string
	srv  *http.Server
	rp   *httputil.ReverseProxy

	mu       sync.Mutex
	requests []upstreamRequest
	corrupt  map[string]bool          // blob digest -> serve flipped bytes
	delay    map[string]time.Duration // blob digest -> wait before answering GET
}

// startFrontProxy listens on addr (port 0: any free port) and forwards to target.
func startFrontProxy(t *testing.T, target, addr string) *frontProxy {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: target}
	p := &frontProxy{corrupt: map[string]bool{}, delay: map[string]time.Duration{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = target
		},
		Transport:      &http.Transport{Proxy: nil},
		ModifyResponse: p.modifyResponse,
	}
	l := listenRetry(t, addr)
	p.Addr = l.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	t.Cleanup(p.Stop)
	return p
}

// Stop closes the listener and every connection.
func (p *frontProxy) Stop() {
	_ = p.srv.Close()
	p.rp.Transport.(*http.Transport).CloseIdleConnections()
}

func (p *frontProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests = append(p.requests, upstreamRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Range")})
	d := p.delay[blobDigest(r.URL.Path)]
	p.mu.Unlock()
	if d > 0 && r.Method == http.MethodGet {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	p.rp.ServeHTTP(w, r)
}

func (p *frontProxy) modifyResponse(resp *http.Response) error {
	p.mu.Lock()
	bad := p.corrupt[blobDigest(resp.Request.URL.Path)]
	p.mu.Unlock()
	if bad && resp.Request.Method == http.MethodGet && resp.StatusCode/100 == 2 {
		resp.Body = flipReader{resp.Body}
	}
	return nil
}

// flipReader inverts every byte: same length, wrong digest.
type flipReader struct{ io.ReadCloser }

func (f flipReader) Read(b []byte) (int, error) {
	n, err := f.ReadCloser.Read(b)
	for i := range b[:n] {
		b[i] ^= 0xff
	}
	return n, err
}

// blobDigest returns the digest of a /v2/<repo>/blobs/<digest> path, or "".
func blobDigest(path string) string {
	i := strings.LastIndex(path, "/blobs/")
	if i < 0 {
		return ""
	}
	return path[i+len("/blobs/"):]
}

// SetCorrupt makes the proxy serve inverted bytes for a blob (or stop doing so).
func (p *frontProxy) SetCorrupt(digest string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.corrupt[digest] = on
}

// SetDelay delays GET responses for a blob.
func (p *frontProxy) SetDelay(digest string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay[digest] = d
}

// Requests returns a copy of the request log.
func (p *frontProxy) Requests() []upstreamRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]upstreamRequest(nil), p.requests...)
}

// Count counts logged requests with the method (any if "") and exact path.
func (p *frontProxy) Count(method, path string) int {
	n := 0
	for _, r := range p.Requests() {
		if (method == "" || r.Method == method) && r.Path == path {
			n++
		}
	}
	return n
}

// blackhole accepts TCP connections and never answers.
type blackhole struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

// listenRetry listens on addr, retrying for 5 s while a previous user releases it.
func listenRetry(t *testing.T, addr string) net.Listener {
	t.Helper()
	var err error
	for range 50 {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			return l
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("listen %s: %v", addr, err)
	return nil
}

// startBlackhole listens on addr.
func startBlackhole(t *testing.T, addr string) *blackhole {
	t.Helper()
	l := listenRetry(t, addr)
	b := &blackhole{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(b.Close)
	return b
}

// Accepted is how many connections the blackhole swallowed.
func (b *blackhole) Accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

func (b *blackhole) Close() {
	_ = b.l.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		_ = c.Close()
	}
}

// waitClosed waits until nothing accepts connections on addr.
func waitClosed(addr string) error {
	for i := 0; i < 50; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New(addr + " still accepts connections")
}
