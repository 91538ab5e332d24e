package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/store"
)

// fault is what the test upstream does to requests.
type fault int32

const (
	faultNone    fault = iota
	faultHang          // accept the request, never answer (a silently dead uplink)
	faultCorrupt       // flip a byte in every blob body
	faultSlow          // delay blob bodies so concurrent clients overlap
	fault503           // answer 503 to everything
	faultTrickle       // blob bodies at 128 KiB/s: longer than a shutdown's grace period
)

// upstream is a real in-process registry (go-containerregistry's) behind a
// fault switch and request counter.
type upstream struct {
	t      *testing.T
	srv    *httptest.Server
	fault  atomic.Int32
	hung   chan struct{} // closed at cleanup to release hanging requests
	mu     sync.Mutex
	counts map[string]int // "GET manifests", "HEAD manifests", "GET blobs", ...
	wrap   func(http.Handler) http.Handler
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{t: t, counts: map[string]int{}, hung: make(chan struct{})}
	reg := registry.New(registry.Logger(nopLogger()), registry.WithReferrersSupport(true))
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.count(r)
		var h http.Handler = reg
		if u.wrap != nil {
			h = u.wrap(reg)
		}
		switch fault(u.fault.Load()) {
		case faultHang:
			select {
			case <-r.Context().Done():
			case <-u.hung:
			}
			return
		case fault503:
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE"}]}`, http.StatusServiceUnavailable)
			return
		case faultCorrupt:
			if strings.Contains(r.URL.Path, "/blobs/") {
				w = &corruptingWriter{ResponseWriter: w}
			}
		case faultSlow:
			if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
				time.Sleep(300 * time.Millisecond)
				w = &slowWriter{ResponseWriter: w, pause: 20 * time.Millisecond}
			}
		case faultTrickle:
			if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
				w = &slowWriter{ResponseWriter: w, pause: 500 * time.Millisecond}
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(u.hung)
		u.srv.Close()
	})
	return u
}

func (u *upstream) count(r *http.Request) {
	kind := "other"
	for _, k := range []string{"manifests", "blobs", "tags"} {
		if strings.Contains(r.URL.Path, "/"+k+"/") {
			kind = k
		}
	}
	u.mu.Lock()
	u.counts[r.Method+" "+kind]++
	u.mu.Unlock()
}

func (u *upstream) requests(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key]
}

func (u *upstream) resetCounts() {
	u.mu.Lock()
	u.counts = map[string]int{}
	u.mu.Unlock()
}

func (u *upstream) host() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) setFault(f fault) { u.fault.Store(int32(f)) }

// push writes an image or index to the upstream under repo:tag.
func (u *upstream) push(repo, tag string, img any) v1.Hash {
	u.t.Helper()
	ref, err := name.ParseReference(u.host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		u.t.Fatal(err)
	}
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

// pushLayer pushes repo:1, an image with one random layer of about size
// bytes, and returns that layer and its digest: the blob most tests pull.
func (u *upstream) pushLayer(repo string, size int64) (v1.Layer, v1.Hash) {
	u.t.Helper()
	img := randomImage(u.t, size, 1)
	u.push(repo, "1", img)
	layers, err := img.Layers()
	if err != nil {
		u.t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		u.t.Fatal(err)
	}
	return layers[0], d
}

type corruptingWriter struct {
	http.ResponseWriter
	done bool
}

func (w *corruptingWriter) Write(p []byte) (int, error) {
	if !w.done && len(p) > 0 {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 0xff
		w.done = true
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}

type slowWriter struct {
	http.ResponseWriter
	pause time.Duration // after each 64 KiB
}

func (w *slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		m, err := w.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		time.Sleep(w.pause)
		p = p[k:]
	}
	return n, nil
}

// outpost is a running Outpost (the real serve function) on loopback.
type outpost struct {
	addr  string
	admin string // /metrics, /healthz, /readyz
	root  string
	app   *app
	stop  func()
}

// startOutpost serves cfgYAML, where %ROOT% and %UP% stand for a temp
// storage root and the upstream's address.
func startOutpost(t *testing.T, cfgYAML string, root string) *outpost {
	t.Helper()
	if root == "" {
		root = t.TempDir()
	}
	cfg, err := configs.Parse("test.yaml", []byte(strings.ReplaceAll(cfgYAML, "%ROOT%", root)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := start(cfg, newLogger(cfg.Log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := a.run(ctx, ln, adminLn)
		a.close()
		done <- err
	}()
	o := &outpost{addr: ln.Addr().String(), admin: adminLn.Addr().String(), root: root, app: a}
	var once sync.Once
	o.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(o.stop)
	return o
}

// config renders a one-upstream config for u with the given tag TTL.
func config(u *upstream, tagTTL string) string {
	return fmt.Sprintf(`
http: {address: "127.0.0.1:0"}
storage: {root: "%%ROOT%%"}
log: {level: error, format: text}
upstreams:
  - name: docker.io
    urls: [%s]
    insecure: true
    default: true
    tagTTL: %s
    revalidateTimeout: 1s
`, u.srv.URL, tagTTL)
}

func (o *outpost) url(path string) string { return "http://" + o.addr + path }

// get fetches a path from Outpost and returns status, headers and body.
func (o *outpost) get(t *testing.T, method, path string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, o.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// ref parses a reference to an image served by Outpost.
func (o *outpost) ref(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(o.addr+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// pullAll fetches a manifest and every blob it references, verifying each.
func pullAll(t *testing.T, ref name.Reference) {
	t.Helper()
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed() // verified against its digest by ggcr
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer of %s: %v", ref, err)
		}
		rc.Close()
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
}

func randomImage(t *testing.T, layerSize int64, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// multiArch builds an index with linux/amd64 and linux/arm64 images.
func multiArch(t *testing.T) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		adds = append(adds, mutate.IndexAddendum{
			Add:        randomImage(t, 2048, 2),
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(emptyIndex(), types.OCIImageIndex), adds...)
}

// checkStore opens the stopped Outpost's store and checks its invariants.
func checkStore(t *testing.T, root string) {
	t.Helper()
	s, err := store.Open(root, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func blobFileExists(root string, d v1.Hash) bool {
	_, err := os.Stat(filepath.Join(root, "blobs", d.Algorithm, d.Hex[:2], d.Hex))
	return !errors.Is(err, os.ErrNotExist)
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func emptyIndex() v1.ImageIndex { return empty.Index }
