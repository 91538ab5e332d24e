package mirror

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// target is a plain HTTP server that records what reaches it.
type target struct {
	srv   *httptest.Server
	hits  atomic.Int32
	mu    sync.Mutex
	auths []string
}

func startTarget(t *testing.T, host string, body []byte) *target {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Skipf("cannot listen on %s: %v", host, err)
	}
	tg := &target{}
	tg.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.hits.Add(1)
		tg.mu.Lock()
		tg.auths = append(tg.auths, r.Header.Get("Authorization"))
		tg.mu.Unlock()
		w.Write(body)
	})}}
	tg.srv.Start()
	t.Cleanup(tg.srv.Close)
	return tg
}

// redirectingRegistry answers blob GETs with a redirect to where(r); it asks
// for basic credentials so that the registry's own requests carry them.
func redirectingRegistry(t *testing.T, tls bool, where func(r *http.Request) string) (*httptest.Server, v1.Hash, []byte) {
	t.Helper()
	wrap := func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, _, ok := r.BasicAuth(); !ok {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && r.URL.Query().Get("direct") == "" {
				http.Redirect(w, r, where(r), http.StatusTemporaryRedirect)
				return
			}
			reg.ServeHTTP(w, r)
		})
	}
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(wrap(newRegistry()))
		t.Cleanup(srv.Close)
	} else {
		srv = registryWith(t, wrap)
	}
	img := seedTo(t, srv, "acme/app", tls)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	b, _ := io.ReadAll(rc)
	return srv, d, b
}

func basicAuth() authn.Authenticator { return &authn.Basic{Username: "bot", Password: "s3cret"} }

// Redirects to a loopback, link-local or private address that is not the
// upstream's own host are refused, and the target is never contacted; the
// presigned query of the target never shows in errors or logs.
func TestRedirectToAForeignPrivateAddressIsRefused(t *testing.T) {
	tg := startTarget(t, "127.0.0.2", []byte("secret service"))
	srv, d, _ := redirectingRegistry(t, false, func(*http.Request) string {
		return tg.srv.URL + "/internal?X-Amz-Signature=TOPSECRET"
	})
	var logs bytes.Buffer
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, Auth: basicAuth(),
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	_, _, err := u.Blob(context.Background(), "acme/app", d, 0, -1)
	var ue *Error
	if !errors.As(err, &ue) || !ue.Refused || !ue.BadContent() {
		t.Fatalf("redirect to 127.0.0.2: %v", err)
	}
	if tg.hits.Load() != 0 {
		t.Error("the refused target was contacted")
	}
	if strings.Contains(err.Error(), "TOPSECRET") || strings.Contains(logs.String(), "TOPSECRET") {
		t.Errorf("the presigned query leaked: %v\n%s", err, logs.String())
	}
	if u.Down() {
		t.Error("a refused redirect counted against the upstream's health")
	}
}

// A redirect to the upstream's own host (another port) is followed, but
// credentials go only to the scheme, host and port that asked for them.
func TestRedirectKeepsCredentialsAtHome(t *testing.T) {
	var tg *target
	srv, d, blob := redirectingRegistry(t, false, func(*http.Request) string { return tg.srv.URL + "/blob?sig=x" })
	tg = startTarget(t, "127.0.0.1", blob)
	var logs bytes.Buffer
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, Auth: basicAuth(),
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	body, _, err := u.Blob(context.Background(), "acme/app", d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if !bytes.Equal(got, blob) || tg.hits.Load() != 1 {
		t.Fatalf("followed redirect: %d bytes, %d hits", len(got), tg.hits.Load())
	}
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.auths[0] != "" {
		t.Errorf("credentials were sent to another port: %q", tg.auths[0])
	}
}

// Never from https to http; never more than MaxRedirects hops.
func TestRedirectDowngradeAndLoopsRefused(t *testing.T) {
	tg := startTarget(t, "127.0.0.1", []byte("x"))
	srv, d, _ := redirectingRegistry(t, true, func(*http.Request) string { return tg.srv.URL + "/blob" })
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, Auth: basicAuth()})
	_, _, err := u.Blob(context.Background(), "acme/app", d, 0, -1)
	var ue *Error
	if !errors.As(err, &ue) || !ue.Refused || tg.hits.Load() != 0 {
		t.Fatalf("https to http: %v (target hits %d)", err, tg.hits.Load())
	}

	loop, d2, _ := redirectingRegistry(t, false, func(r *http.Request) string { return r.URL.String() })
	u = newTestUpstream(t, Options{URLs: []string{loop.URL}, Insecure: true, Auth: basicAuth()})
	if _, _, err := u.Blob(context.Background(), "acme/app", d2, 0, -1); !errors.As(err, &ue) || !ue.Refused {
		t.Fatalf("redirect loop: %v", err)
	}
}

func TestIsPublic(t *testing.T) {
	for addr, public := range map[string]bool{
		"127.0.0.1": false, "127.0.0.2": false, "::1": false, "10.1.2.3": false, "192.168.1.1": false,
		"172.16.0.1": false, "169.254.169.254": false, "fe80::1": false, "fd00::1": false, "100.64.0.1": false,
		"0.0.0.0": false, "::ffff:127.0.0.1": false, "8.8.8.8": true, "2606:4700::1111": true, "52.216.0.1": true,
		"64:ff9b::7f00:1": false, "64:ff9b::808:808": true, "2002:c0a8:101::1": false, "198.18.0.1": false,
		"240.0.0.1": false, "255.255.255.255": false, "192.0.0.8": false,
	} {
		if _, err := publicAddrs(context.Background(), addr); (err == nil) != public {
			t.Errorf("%s: public %v, err %v", addr, public, err)
		}
	}
}

// go-containerregistry's own ping follows redirects with Go's default
// policy; the guard below it still refuses a downgrade to plain HTTP.
func TestPingDowngradeRefused(t *testing.T) {
	plain := startTarget(t, "127.0.0.1", []byte("{}"))
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.srv.URL+r.URL.Path, http.StatusFound)
	}))
	defer tlsSrv.Close()
	u := newTestUpstream(t, Options{URLs: []string{tlsSrv.URL}, Insecure: true, Auth: basicAuth()})
	_, _, err := u.Manifest(context.Background(), "acme/app", "1")
	var ue *Error
	if !errors.As(err, &ue) || !ue.BadContent() || plain.hits.Load() != 0 {
		t.Fatalf("https ping redirected to http: %v (plain server hit %d times)", err, plain.hits.Load())
	}
}

// A 404 at /v2/ is a misrouted front (a captive portal, a proxy), not a
// registry saying the repository does not exist.
func TestPing404IsNotNotFound(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	_, err := u.Head(context.Background(), "acme/app", "1")
	var ue *Error
	if !errors.As(err, &ue) || ue.NotFound() || !ue.BadContent() || u.Down() {
		t.Fatalf("404 at /v2/: %v", err)
	}
}

func TestNextQuery(t *testing.T) {
	q := nextQuery(`</v2/a/tags/list?last=1&n=2>; rel="prev", </v2/a/tags/list?last=3&n=2>; rel="next"`)
	if q.Get("last") != "3" {
		t.Errorf("next page: %v", q)
	}
	if q := nextQuery(`</v2/a/tags/list?last=1>; rel="prev"`); q != nil {
		t.Errorf("no next page: %v", q)
	}
}
