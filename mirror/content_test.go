package mirror

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What comes back as a manifest is a manifest: a captive portal's HTML, a
// JSON error page or bytes that do not match Docker-Content-Digest are
// refused, and nothing is returned.
func TestManifestMustBeAManifest(t *testing.T) {
	var answer atomic.Value
	srv := registryWith(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if f, ok := answer.Load().(func(http.ResponseWriter)); ok && f != nil && strings.Contains(r.URL.Path, "/manifests/") {
				f(w)
				return
			}
			reg.ServeHTTP(w, r)
		})
	})
	img := seed(t, srv, "acme/app")
	raw, _ := img.RawManifest()
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	cases := map[string]func(http.ResponseWriter){
		"captive portal": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>Please log in to the hotel Wi-Fi</body></html>")
		},
		"json error page": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"status":"ok","message":"proxy"}`)
		},
		"wrong Docker-Content-Digest": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", string(types.DockerManifestSchema2))
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("0", 64))
			w.Write(raw)
		},
		"media type disagrees": func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			w.Write(raw)
		},
	}
	for name, f := range cases {
		answer.Store(f)
		_, _, err := u.Manifest(context.Background(), "acme/app", "1")
		var ue *Error
		if !errors.As(err, &ue) || !ue.BadContent() {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A generic Content-Type defers to the document.
	answer.Store(func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(raw)
	})
	_, desc, err := u.Manifest(context.Background(), "acme/app", "1")
	if err != nil || desc.MediaType != types.DockerManifestSchema2 {
		t.Errorf("generic Content-Type: %v %s", err, desc.MediaType)
	}
	if u.Down() {
		t.Error("bad content counted against the upstream's health")
	}
}

// rangeable serves blob Range requests (as real registries do) and can
// break the first body after half of it.
func rangeable(breakFirst *atomic.Bool, trickle time.Duration) func(http.Handler) http.Handler {
	return func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
				reg.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			plain := r.Clone(r.Context())
			plain.Header.Del("Range")
			reg.ServeHTTP(rec, plain)
			body := rec.Body.Bytes()
			if breakFirst != nil && breakFirst.CompareAndSwap(true, false) {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				w.Write(body[:len(body)/2])
				w.(http.Flusher).Flush()
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return
			}
			if trickle > 0 {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				for i := 0; i < len(body); i += 512 {
					w.Write(body[i:min(i+512, len(body))])
					w.(http.Flusher).Flush()
					time.Sleep(trickle)
				}
				return
			}
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
		})
	}
}

func firstLayer(t *testing.T, img v1.Image) (v1.Hash, int64) {
	t.Helper()
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	return d, size
}

// A body that breaks is resumed with Range from where it broke, and the
// bytes come out whole.
func TestBlobBodyResumesWithRange(t *testing.T) {
	var breakFirst atomic.Bool
	breakFirst.Store(true)
	srv := registryWith(t, rangeable(&breakFirst, 0))
	img := seed(t, srv, "acme/app")
	d, size := firstLayer(t, img)
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	body, total, err := u.Blob(context.Background(), "acme/app", d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, n, err := v1.SHA256(body)
	body.Close()
	if err != nil || got != d || n != size || total != size {
		t.Fatalf("resumed blob: %s %d/%d %v", got, n, total, err)
	}
	if breakFirst.Load() {
		t.Fatal("the body never broke: the test proves nothing")
	}
}

// Blobs beyond MaxBlobSize are refused before a byte is read; a download
// that does not finish within BlobTimeout is cut, however steadily it
// trickles.
func TestBlobLimits(t *testing.T) {
	srv := registryWith(t, rangeable(nil, 20*time.Millisecond))
	img := seed(t, srv, "acme/app")
	d, size := firstLayer(t, img)
	small := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, MaxBlobSize: size - 1})
	var ue *Error
	if _, _, err := small.Blob(context.Background(), "acme/app", d, 0, -1); !errors.As(err, &ue) || !ue.Invalid {
		t.Errorf("blob above the size limit: %v", err)
	}
	if _, err := small.BlobHead(context.Background(), "acme/app", d); !errors.As(err, &ue) || !ue.Invalid {
		t.Errorf("HEAD of a blob above the size limit: %v", err)
	}
	slow := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true, BlobTimeout: 100 * time.Millisecond})
	body, _, err := slow.Blob(context.Background(), "acme/app", d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, body)
	body.Close()
	if err == nil || !strings.Contains(err.Error(), "did not finish within") {
		t.Errorf("trickling download: %v", err)
	}
}

// HEAD of a blob gives its size without downloading it.
func TestBlobHead(t *testing.T) {
	rec, srv := newRecorded(t)
	img := seed(t, srv, "acme/app")
	rec.reset()
	d, size := firstLayer(t, img)
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	n, err := u.BlobHead(context.Background(), "acme/app", d)
	if err != nil || n != size {
		t.Fatalf("BlobHead: %d %v", n, err)
	}
	rec.mu.Lock()
	for _, q := range rec.queries {
		if strings.HasPrefix(q, "GET ") {
			t.Errorf("BlobHead downloaded: %s", q)
		}
	}
	rec.mu.Unlock()
	var ue *Error
	missing, _ := v1.NewHash("sha256:" + strings.Repeat("a", 64))
	if _, err := u.BlobHead(context.Background(), "acme/app", missing); !errors.As(err, &ue) || !ue.NotFound() {
		t.Errorf("missing blob: %v", err)
	}
}

// Without a referrers API (404), referrers come from the tag schema's
// index; with nothing there either, the list is empty, not an error.
func TestReferrersFallBackToTagSchema(t *testing.T) {
	srv := registryWith(t, func(reg http.Handler) http.Handler { return reg }) // no referrers API
	img := seed(t, srv, "acme/app")
	subject, _ := img.Digest()
	u := newTestUpstream(t, Options{URLs: []string{srv.URL}, Insecure: true})
	descs, err := u.Referrers(context.Background(), "acme/app", subject)
	if err != nil || len(descs) != 0 {
		t.Fatalf("nothing known: %v %v", descs, err)
	}
	sig, _ := random.Image(100, 1)
	sigDigest, _ := sig.Digest()
	sigSize, _ := sig.Size()
	index := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
		Add: sig, Descriptor: v1.Descriptor{ArtifactType: "application/vnd.example.sig", Size: sigSize, Digest: sigDigest},
	})
	ref, _ := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/acme/app:sha256-"+subject.Hex, name.Insecure)
	if err := remote.WriteIndex(ref, index); err != nil {
		t.Fatal(err)
	}
	descs, err = u.Referrers(context.Background(), "acme/app", subject)
	if err != nil || len(descs) != 1 || descs[0].Digest != sigDigest {
		t.Fatalf("from the tag schema: %+v %v", descs, err)
	}
}
