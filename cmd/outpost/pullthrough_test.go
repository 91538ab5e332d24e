package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const acceptAll = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"

// Every routing form clients use reaches the same upstream repository and
// shares one cache entry.
func TestRoutingFormsShareOneEntry(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 1024, 2)
	want := up.push("library/alpine", "3", img)
	o := startOutpost(t, config(up, "1h"), "")

	paths := []string{
		"/v2/alpine/manifests/3",
		"/v2/library/alpine/manifests/3",
		"/v2/docker.io/library/alpine/manifests/3",
		"/v2/index.docker.io/library/alpine/manifests/3",
		"/v2/library/alpine/manifests/3?ns=docker.io",
		"/v2/alpine/manifests/3?ns=registry-1.docker.io",
		"/v2/docker.io/library/alpine/manifests/3?ns=docker.io&foo=bar",
	}
	for _, p := range paths {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			status, h, body := o.get(t, method, p, "Accept", acceptAll)
			if status != http.StatusOK || h.Get("Docker-Content-Digest") != want.String() {
				t.Fatalf("%s %s: %d %q %s", method, p, status, h.Get("Docker-Content-Digest"), body)
			}
			if h.Get("Content-Length") == "" || h.Get("Content-Type") != string(types.DockerManifestSchema2) {
				t.Errorf("%s %s: Content-Length %q Content-Type %q", method, p, h.Get("Content-Length"), h.Get("Content-Type"))
			}
		}
	}
	if n := up.requests("GET manifests"); n != 1 {
		t.Errorf("upstream saw %d manifest GETs for one tag, want 1", n)
	}
	_, _, body := o.get(t, http.MethodGet, "/v2/_catalog")
	if got := string(body); got != `{"repositories":["docker.io/library/alpine"]}` {
		t.Errorf("catalog = %s", got)
	}
	pullAll(t, o.ref(t, "alpine:3"))
	pullAll(t, o.ref(t, "docker.io/library/alpine@"+want.String()))
	o.stop()
	checkStore(t, o.root)
}

// A non-default upstream is reached by ns= or by a leading host component,
// and names not under any upstream are refused.
func TestSecondUpstreamByNsAndPrefix(t *testing.T) {
	hub, ghcr := newUpstream(t), newUpstream(t)
	d := ghcr.push("acme/tool", "v1", randomImage(t, 512, 1))
	ghcr.push("acme/tool", "v2", randomImage(t, 512, 1))
	o := startOutpost(t, config(hub, "1h")+fmt.Sprintf(`
  - name: ghcr.io
    urls: [%s]
    insecure: true
`, ghcr.srv.URL), "")
	for _, p := range []string{"/v2/ghcr.io/acme/tool/manifests/v1", "/v2/acme/tool/manifests/v1?ns=ghcr.io"} {
		status, h, body := o.get(t, http.MethodGet, p)
		if status != http.StatusOK || h.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("GET %s: %d %s", p, status, body)
		}
	}
	// Pagination links keep ns=, or the next page would go to docker.io.
	_, h, body := o.get(t, http.MethodGet, "/v2/acme/tool/tags/list?ns=ghcr.io&n=1")
	if string(body) != `{"name":"acme/tool","tags":["v1"]}` || h.Get("Link") != `</v2/acme/tool/tags/list?ns=ghcr.io&n=1&last=v1>; rel="next"` {
		t.Errorf("paginated tags by ns: %s, Link %q", body, h.Get("Link"))
	}
	status, _, body := o.get(t, http.MethodGet, "/v2/acme/tool/manifests/v1?ns=quay.io")
	if status != http.StatusNotFound || !bytes.Contains(body, []byte("NAME_UNKNOWN")) {
		t.Errorf("unconfigured ns: %d %s", status, body)
	}
	if n := hub.requests("GET manifests"); n != 0 {
		t.Errorf("docker.io upstream saw %d manifest GETs", n)
	}
	// The digest is cached, but docker.io's acme/tool does not have it.
	status, _, body = o.get(t, http.MethodGet, "/v2/acme/tool/manifests/"+d.String())
	if status != http.StatusNotFound || !bytes.Contains(body, []byte("MANIFEST_UNKNOWN")) {
		t.Errorf("digest of another registry: %d %s", status, body)
	}
}

// An index pulled by tag is stored unchanged; its children and their blobs
// come on demand, including a platform that is not this machine's.
func TestMultiArchIndexAndForeignPlatform(t *testing.T) {
	up := newUpstream(t)
	idx := multiArch(t)
	want := up.push("library/alpine", "3", idx)
	o := startOutpost(t, config(up, "1h"), "")

	desc, err := remote.Get(o.ref(t, "alpine:3"))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want || desc.MediaType != types.OCIImageIndex {
		t.Fatalf("index digest %s (%s), want %s", desc.Digest, desc.MediaType, want)
	}
	manifest, _ := idx.IndexManifest()
	for _, m := range manifest.Manifests {
		if m.Platform.Architecture == "arm64" {
			img, err := remote.Image(o.ref(t, "alpine@"+m.Digest.String()))
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			pullAll(t, o.ref(t, "alpine@"+m.Digest.String()))
			_ = cf
		}
	}
	if n := up.requests("GET blobs"); n != 3 { // arm64 config + 2 layers; amd64 never asked
		t.Errorf("upstream blob GETs = %d, want 3 (only the arm64 image)", n)
	}
	o.stop()
	checkStore(t, o.root)
}

func TestRangeReads(t *testing.T) {
	up := newUpstream(t)
	layer, d := up.pushLayer("acme/big", 100_000)
	rc, _ := layer.Compressed()
	blob, _ := io.ReadAll(rc)
	o := startOutpost(t, config(up, "1h"), "")
	path := "/v2/acme/big/blobs/" + d.String()

	// Cold: a range on a blob not yet stored waits for the verified blob.
	status, h, body := o.get(t, http.MethodGet, path, "Range", "bytes=10-19")
	if status != http.StatusPartialContent || !bytes.Equal(body, blob[10:20]) ||
		h.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", len(blob)) {
		t.Fatalf("cold range: %d %q %d bytes", status, h.Get("Content-Range"), len(body))
	}
	n := int64(len(blob))
	cases := []struct {
		rng    string
		status int
		want   []byte
	}{
		{"bytes=0-0", 206, blob[:1]},
		{"bytes=100-", 206, blob[100:]},
		{"bytes=-5", 206, blob[n-5:]},
		{fmt.Sprintf("bytes=0-%d", n+100), 206, blob},
		{fmt.Sprintf("bytes=%d-", n), 416, nil},
		{"bytes=0-1,5-6", 200, blob}, // several ranges: whole blob
		{"", 200, blob},
	}
	for _, c := range cases {
		status, h, body := o.get(t, http.MethodGet, path, "Range", c.rng)
		if status != c.status || (c.want != nil && !bytes.Equal(body, c.want)) {
			t.Errorf("Range %q: status %d, %d bytes (%q)", c.rng, status, len(body), h.Get("Content-Range"))
		}
	}
	status, h, _ = o.get(t, http.MethodHead, path)
	if status != 200 || h.Get("Content-Length") != fmt.Sprint(n) || h.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("HEAD blob: %d %v", status, h)
	}
	if got := up.requests("GET blobs"); got != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", got)
	}
}

// 32 clients asking for one cold blob at once cause one upstream GET, and
// every one of them receives the right bytes.
func TestConcurrentColdBlobOneUpstreamFetch(t *testing.T) {
	up := newUpstream(t)
	_, d := up.pushLayer("acme/big", 2<<20)
	up.setFault(faultSlow)
	o := startOutpost(t, config(up, "1h"), "")

	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(o.url("/v2/acme/big/blobs/" + d.String()))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			got, _, err := v1.SHA256(resp.Body)
			if err != nil || got != d || resp.StatusCode != 200 {
				errs <- fmt.Errorf("status %d, digest %s, err %v", resp.StatusCode, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := up.requests("GET blobs"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
	o.stop()
	checkStore(t, o.root)
}

// A blob whose upstream bytes do not match the digest is never served whole
// and never stored; once upstream is fixed the right bytes come through.
func TestCorruptUpstreamBlobNeverServedOrStored(t *testing.T) {
	up := newUpstream(t)
	_, d := up.pushLayer("acme/app", 300_000)
	o := startOutpost(t, config(up, "1h"), "")
	path := "/v2/acme/app/blobs/" + d.String()

	up.setFault(faultCorrupt)
	for i := 0; i < 3; i++ {
		resp, err := http.Get(o.url(path))
		if err != nil {
			continue // cut before headers: fine
		}
		got, _, err := v1.SHA256(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == 200 {
			t.Fatalf("corrupt blob served complete (digest %s)", got)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if blobFileExists(o.root, d) {
		t.Fatal("corrupt blob was stored")
	}
	if cut := value(o.scrape(t), "outpost_fill_responses_cut_total", nil); cut < 1 {
		t.Errorf("no cut response counted (%v)", cut)
	}
	up.setFault(faultNone)
	_, _, body := o.get(t, http.MethodGet, path)
	if got, _, _ := v1.SHA256(bytes.NewReader(body)); got != d {
		t.Fatalf("after fix: digest %s, want %s", got, d)
	}
	o.stop()
	checkStore(t, o.root)
}

// Errors are OCI error JSON with the spec's codes and statuses; bad names
// never reach the disk.
func TestErrors(t *testing.T) {
	up := newUpstream(t)
	up.push("library/alpine", "3", randomImage(t, 100, 1))
	o := startOutpost(t, config(up, "1h"), "")
	missing := "sha256:" + fmt.Sprintf("%064x", 1)
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/alpine/manifests/nope", 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/alpine/manifests/" + missing, 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/alpine/blobs/" + missing, 404, "BLOB_UNKNOWN"},
		{"GET", "/v2/alpine/blobs/sha256:abc", 400, "DIGEST_INVALID"},
		{"GET", "/v2/alpine/manifests/sha256:xyz", 400, "DIGEST_INVALID"},
		{"GET", "/v2/Alpine/manifests/3", 400, "NAME_INVALID"},
		{"GET", "/v2/library/../etc/manifests/3", 400, "NAME_INVALID"}, // as sent, not normalized
		{"GET", "/v2/library/..%2f..%2fetc/manifests/3", 400, "NAME_INVALID"},
		{"GET", "/v2/" + string(bytes.Repeat([]byte("a/"), 200)) + "x/manifests/3", 400, "NAME_INVALID"},
		{"GET", "/v2/nothere/tags/list", 404, "NAME_UNKNOWN"},
		{"PUT", "/v2/alpine/manifests/3", 405, "UNSUPPORTED"},
		{"DELETE", "/v2/alpine/blobs/" + missing, 405, "UNSUPPORTED"},
		{"POST", "/v2/alpine/blobs/uploads/", 405, "UNSUPPORTED"},
	}
	for _, c := range cases {
		status, h, body := o.get(t, c.method, c.path)
		var e struct {
			Errors []struct{ Code string } `json:"errors"`
		}
		if err := json.Unmarshal(body, &e); err != nil || status != c.status || len(e.Errors) != 1 || e.Errors[0].Code != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, status, body, c.status, c.code)
		}
		if h.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: Content-Type %q", c.method, c.path, h.Get("Content-Type"))
		}
	}
	status, h, body := o.get(t, "GET", "/v2/")
	if status != 200 || h.Get("Docker-Distribution-API-Version") != "registry/2.0" || string(body) != "{}" {
		t.Errorf("GET /v2/: %d %v %s", status, h, body)
	}
}

func TestTagsListPagination(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 100, 1)
	for _, tag := range []string{"a", "b", "c", "d"} {
		up.push("acme/app", tag, img)
	}
	o := startOutpost(t, config(up, "1h"), "")
	for _, tag := range []string{"d", "b", "a"} { // c is never pulled
		o.get(t, "GET", "/v2/acme/app/manifests/"+tag)
	}
	cases := map[string]string{
		"":            `{"name":"acme/app","tags":["a","b","c","d"]}`,
		"?n=2":        `{"name":"acme/app","tags":["a","b"]}`,
		"?n=2&last=b": `{"name":"acme/app","tags":["c","d"]}`,
		"?last=d":     `{"name":"acme/app","tags":[]}`,
		"?n=0":        `{"name":"acme/app","tags":[]}`,
	}
	for q, want := range cases {
		_, h, body := o.get(t, "GET", "/v2/acme/app/tags/list"+q)
		if string(body) != want {
			t.Errorf("tags%s = %s, want %s", q, body, want)
		}
		if q == "?n=2" && h.Get("Link") != `</v2/acme/app/tags/list?n=2&last=b>; rel="next"` {
			t.Errorf("Link = %q", h.Get("Link"))
		}
	}
	// Offline, the list is what the cache holds (a repository whose
	// upstream list was never asked for, so none is kept from before).
	for _, tag := range []string{"a", "b", "c"} {
		up.push("acme/other", tag, img)
	}
	for _, tag := range []string{"a", "b"} {
		o.get(t, "GET", "/v2/acme/other/manifests/"+tag)
	}
	up.srv.Close()
	status, _, body := o.get(t, "GET", "/v2/acme/other/tags/list")
	if status != 200 || string(body) != `{"name":"acme/other","tags":["a","b"]}` {
		t.Errorf("offline tags: %d %s", status, body)
	}
}

// A client that leaves does not abort a download: the blob is still stored.
func TestClientDisconnectKeepsDownload(t *testing.T) {
	up := newUpstream(t)
	_, d := up.pushLayer("acme/app", 1<<20)
	up.setFault(faultSlow)
	o := startOutpost(t, config(up, "1h"), "")

	resp, err := http.Get(o.url("/v2/acme/app/blobs/" + d.String()))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1000))
	resp.Body.Close() // leave mid-stream

	deadline := time.Now().Add(10 * time.Second)
	for !blobFileExists(o.root, d) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !blobFileExists(o.root, d) {
		t.Fatal("download was not completed after the client left")
	}
	up.setFault(faultNone)
	_, _, body := o.get(t, http.MethodGet, "/v2/acme/app/blobs/"+d.String())
	if got, _, _ := v1.SHA256(bytes.NewReader(body)); got != d || up.requests("GET blobs") != 1 {
		t.Errorf("second client: digest %s, upstream GETs %d", got, up.requests("GET blobs"))
	}
	o.stop()
	checkStore(t, o.root)
}

// The referrers API lists upstream's referrers while it answers, and the
// cached ones offline; artifactType filters.
func TestReferrers(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 100, 1)
	subject := up.push("acme/app", "1", img)
	mt, _ := img.MediaType()
	size, _ := img.Size()
	sig := mutate.ConfigMediaType(mutate.MediaType(randomImage(t, 50, 1), types.OCIManifestSchema1), "application/vnd.example.sig")
	sigged := mutate.Subject(sig, v1.Descriptor{MediaType: mt, Size: size, Digest: subject}).(v1.Image)
	sigDigest := up.push("acme/app", "sig", sigged)
	o := startOutpost(t, config(up, "1h"), "")

	referrers := func(query string) (int, v1.IndexManifest, http.Header) {
		status, h, body := o.get(t, http.MethodGet, "/v2/acme/app/referrers/"+subject.String()+query)
		var index v1.IndexManifest
		json.Unmarshal(body, &index)
		return status, index, h
	}
	status, index, h := referrers("")
	if status != 200 || len(index.Manifests) != 1 || index.Manifests[0].Digest != sigDigest ||
		h.Get("Content-Type") != string(types.OCIImageIndex) {
		t.Fatalf("online referrers: %d %+v %v", status, index, h)
	}
	if _, index, h = referrers("?artifactType=other"); len(index.Manifests) != 0 || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Errorf("filtered: %+v %v", index, h)
	}
	// Pull the signature once, then go offline: it is still listed.
	o.get(t, http.MethodGet, "/v2/acme/app/manifests/"+sigDigest.String())
	up.srv.Close()
	if status, index, _ = referrers("?artifactType=application/vnd.example.sig"); status != 200 || len(index.Manifests) != 1 {
		t.Errorf("offline referrers: %d %+v", status, index)
	}
}

// Every fill lets go of its files: no descriptor stays open on the data
// directory's content once downloads and responses are done (the GC is off,
// so a finalizer cannot hide a leak).
func TestFillsCloseTheirFiles(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	up := newUpstream(t)
	img := randomImage(t, 20_000, 10)
	up.push("acme/app", "1", img)
	o := startOutpost(t, config(up, "1h"), "")
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		o.get(t, http.MethodGet, "/v2/acme/app/blobs/"+d.String())
	}
	open := func() []string {
		var paths []string
		entries, _ := os.ReadDir("/proc/self/fd")
		for _, e := range entries {
			p, err := os.Readlink("/proc/self/fd/" + e.Name())
			if err != nil || !strings.HasPrefix(p, filepath.Join(o.root, "blobs")) && !strings.HasPrefix(p, filepath.Join(o.root, ".sync")) {
				continue
			}
			// A directory open for a moment (a session's RemoveAll) is no
			// leaked file.
			if fi, err := os.Stat(p); err == nil && fi.IsDir() {
				continue
			}
			paths = append(paths, p)
		}
		return paths
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(open()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if paths := open(); len(paths) > 0 {
		t.Errorf("%d files of the store still open after 10 fills: %v", len(paths), paths)
	}
}

// An upstream configured under one of Docker Hub's other names routes and
// stores exactly like docker.io.
func TestDockerHubAliasAsUpstreamName(t *testing.T) {
	up := newUpstream(t)
	d := up.push("library/alpine", "3", randomImage(t, 100, 1))
	o := startOutpost(t, strings.Replace(config(up, "1h"), "name: docker.io", "name: index.docker.io", 1), "")
	for _, p := range []string{"/v2/alpine/manifests/3", "/v2/library/alpine/manifests/3?ns=docker.io", "/v2/docker.io/library/alpine/manifests/3"} {
		if status, h, body := o.get(t, http.MethodGet, p); status != 200 || h.Get("Docker-Content-Digest") != d.String() {
			t.Errorf("GET %s: %d %s", p, status, body)
		}
	}
	if _, _, body := o.get(t, http.MethodGet, "/v2/_catalog"); string(body) != `{"repositories":["docker.io/library/alpine"]}` {
		t.Errorf("catalog: %s", body)
	}
}
