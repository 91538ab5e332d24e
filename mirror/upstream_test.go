package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// registryWith serves go-containerregistry's in-process registry behind wrap.
func registryWith(t *testing.T, wrap func(http.Handler) http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(wrap(newRegistry()))
	t.Cleanup(srv.Close)
	return srv
}

func newRegistry() http.Handler { return registry.New(registry.Logger(log.New(io.Discard, "", 0))) }

func seed(t *testing.T, srv *httptest.Server, repo string) v1.Image {
	t.Helper()
	return seedTo(t, srv, repo, false)
}

// seedTo pushes a random image as repo:1, over TLS (trusting the test
// server's certificate) when tls is set.
func seedTo(t *testing.T, srv *httptest.Server, repo string, tls bool) v1.Image {
	t.Helper()
	img, err := random.Image(4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://")
	opts := []name.Option{name.Insecure}
	if tls {
		opts = nil
	}
	ref, _ := name.ParseReference(host+"/"+repo+":1", opts...)
	// Seed through the raw registry, with the credentials any auth wrapper wants.
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "bot", Password: "s3cret"}),
		remote.WithTransport(srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	return img
}

func newTestUpstream(t *testing.T, opts Options) *Upstream {
	t.Helper()
	opts.Name = "registry.test"
	opts.RetryWaitMin = 10 * time.Millisecond
	u, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return u
}

// The Docker Hub token flow: 401 with a Bearer challenge, credentials to the
// realm, a token, the request again with it.
func TestBearerTokenAuth(t *testing.T) {
	var tokenRequests atomic.Int32
	var srv *httptest.Server
	srv = registryWith(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				tokenRequests.Add(1)
				if user, pass, ok := r.BasicAuth(); !ok || user != "bot" || pass != "s3cret" {
					http.Error(w, "bad credentials", http.StatusUnauthorized)
					return
				}
				if !strings.Contains(r.URL.Query().Get("scope"), "repository:acme/app:") || !strings.Contains(r.URL.Query().Get("scope"), "pull") {
					http.Error(w, "bad scope "+r.URL.Query().Get("scope"), http.StatusForbidden)
					return
				}
				json.NewEncoder(w).Encode(map[string]string{"token": "tok-123"})
				return
			}
			if r.Method == http.MethodGet && r.Header.Get("Authorization") != "Bearer tok-123" && !strings.Contains(r.Header.Get("Authorization"), "Basic") {
				w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="registry.test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
			reg.ServeHTTP(w, r)
		})
	})
	img := seed(t, srv, "acme/app")
	want, _ := img.Digest()

	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true,
		Auth: &authn.Basic{Username: "bot", Password: "s3cret"}})
	b, desc, err := u.Manifest(context.Background(), "acme/app", "1")
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want || len(b) == 0 {
		t.Fatalf("digest %s, want %s", desc.Digest, want)
	}
	if tokenRequests.Load() == 0 {
		t.Fatal("no token was fetched")
	}

	bad := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true,
		Auth: &authn.Basic{Username: "bot", Password: "wrong"}})
	_, _, err = bad.Manifest(context.Background(), "acme/app", "1")
	var ue *Error
	if !errors.As(err, &ue) || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v", err)
	}
}

// 429 with a short Retry-After is waited out; a long one is returned at once.
func TestRetryAfter(t *testing.T) {
	var calls atomic.Int32
	var retryAfter atomic.Value
	retryAfter.Store("1")
	srv := registryWith(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") && calls.Add(1) == 1 {
				w.Header().Set("Retry-After", retryAfter.Load().(string))
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS"}]}`, http.StatusTooManyRequests)
				return
			}
			reg.ServeHTTP(w, r)
		})
	})
	seed(t, srv, "acme/app")
	calls.Store(0)
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	start := time.Now()
	if _, _, err := u.Manifest(context.Background(), "acme/app", "1"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("Retry-After: 1 not honoured (took %v)", took)
	}

	calls.Store(0)
	retryAfter.Store("3600")
	start = time.Now()
	_, _, err := u.Manifest(context.Background(), "acme/app", "1")
	var ue *Error
	if !errors.As(err, &ue) || !ue.TooManyRequests() || time.Since(start) > time.Second {
		t.Errorf("long Retry-After: %v after %v", err, time.Since(start))
	}
}

// URLs are tried in order; a dead first URL fails over to the next, and
// 503s are retried.
func TestFailoverAndRetries(t *testing.T) {
	var fails atomic.Int32
	srv := registryWith(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet && fails.Add(1) <= 2 {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			if r.Header.Get("Range") != "" { // serve every RFC 9110 form, as real registries do
				rec := httptest.NewRecorder()
				plain := r.Clone(r.Context())
				plain.Header.Del("Range")
				reg.ServeHTTP(rec, plain)
				http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(rec.Body.Bytes()))
				return
			}
			reg.ServeHTTP(w, r)
		})
	})
	img := seed(t, srv, "acme/app")
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	u := newTestUpstream(t, Options{URLs: []string{"http://127.0.0.1:9", srv.URL}, Insecure: true})
	body, size, err := u.Blob(context.Background(), "acme/app", d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, n, _ := v1.SHA256(body)
	body.Close()
	if got != d || n != size {
		t.Fatalf("blob %s (%d bytes), want %s (%d)", got, n, d, size)
	}
	// Resume: a ranged read from an offset.
	body, total, err := u.Blob(context.Background(), "acme/app", d, 100, -1)
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(body)
	body.Close()
	if total != size || int64(len(rest)) != size-100 {
		t.Errorf("ranged read: total %d, %d bytes", total, len(rest))
	}
}

func TestCredentialsFromDockerConfig(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/config.json"
	cfg := `{"auths":{"registry.test:5000":{"auth":"Ym90OnMzY3JldA=="},"https://index.docker.io/v1/":{"username":"hub","password":"pw"}}}`
	if err := writeFile(path, cfg); err != nil {
		t.Fatal(err)
	}
	for reg, wantUser := range map[string]string{"registry.test:5000": "bot", "docker.io": "hub", "other.io": ""} {
		a, err := Credentials(reg, "", "", path)
		if err != nil {
			t.Fatal(err)
		}
		ac, _ := a.Authorization()
		if ac.Username != wantUser {
			t.Errorf("%s: user %q, want %q", reg, ac.Username, wantUser)
		}
	}
}
