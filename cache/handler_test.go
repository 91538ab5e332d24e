package cache_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	ociManifest = string(types.OCIManifestSchema1)
	ociIndex    = string(types.OCIImageIndex)
	dockerV2    = string(types.DockerManifestSchema2)
	dockerList  = string(types.DockerManifestList)
)

func errorCode(body []byte) string {
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) != 1 {
		return ""
	}
	return e.Errors[0].Code
}

// fixture is what the handler tests pull: an OCI image, a Docker image, a
// Docker manifest list of amd64 and arm64 images, an OCI index.
type fixture struct {
	oci, docker                v1.Hash
	list, listAMD64, listARM64 v1.Hash
	index                      v1.Hash
	ociBytes                   []byte
	layer                      v1.Hash
}

func seedFixture(t *testing.T, up *upstreamServer) fixture {
	t.Helper()
	var fx fixture
	oci := mutate.MediaType(randomImage(t, 2048, 1), types.OCIManifestSchema1)
	oci = mutate.ConfigMediaType(oci, types.OCIConfigJSON)
	fx.oci = up.push("acme/oci", "1", oci)
	fx.ociBytes, _ = oci.RawManifest()
	fx.layer = layerOf(t, oci, 0)
	fx.docker = up.push("acme/docker", "1", randomImage(t, 2048, 1))

	var adds []mutate.IndexAddendum
	for _, arch := range []string{"arm64", "amd64"} {
		img := randomImage(t, 1024, 1)
		d, _ := img.Digest()
		if arch == "amd64" {
			fx.listAMD64 = d
		} else {
			fx.listARM64 = d
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	fx.list = up.push("acme/list", "1", mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList), adds...))
	fx.index = up.push("acme/index", "1", mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: oci, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}}))
	return fx
}

// The handler, table-driven: routing, content negotiation, conditional
// requests and OCI errors, against a real store and upstream.
func TestHandler(t *testing.T) {
	up := newUpstreamServer(t, true)
	fx := seedFixture(t, up)
	e := newEnv(t, envOptions{tagTTL: time.Hour, upstreams: map[string]*upstreamServer{"docker.io": up}})
	missing := "sha256:" + strings.Repeat("1", 64)
	cases := []struct {
		name    string
		method  string
		path    string
		header  []string
		status  int
		code    string // OCI error code, for errors
		digest  string // Docker-Content-Digest, for successes
		ctype   string
		noBody  bool
		exactly []byte
	}{
		{name: "OCI manifest, no Accept", method: "GET", path: "/v2/acme/oci/manifests/1", status: 200, digest: fx.oci.String(), ctype: ociManifest, exactly: fx.ociBytes},
		{name: "OCI manifest, */*", method: "GET", path: "/v2/acme/oci/manifests/1", header: []string{"Accept", "*/*"}, status: 200, digest: fx.oci.String()},
		{name: "OCI manifest, OCI accepted", method: "GET", path: "/v2/acme/oci/manifests/1", header: []string{"Accept", ociManifest}, status: 200, digest: fx.oci.String()},
		{name: "OCI manifest, several Accept headers", method: "GET", path: "/v2/acme/oci/manifests/1", header: []string{"Accept", dockerV2, "Accept", ociManifest + ";q=0.9"}, status: 200, digest: fx.oci.String()},
		{name: "OCI manifest, only Docker accepted", method: "GET", path: "/v2/acme/oci/manifests/1", header: []string{"Accept", dockerV2}, status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "OCI manifest, refused with q=0", method: "GET", path: "/v2/acme/oci/manifests/1", header: []string{"Accept", ociManifest + ";q=0"}, status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "OCI index, only manifests accepted", method: "GET", path: "/v2/acme/index/manifests/1", header: []string{"Accept", ociManifest + ", " + dockerV2}, status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "OCI index, accepted", method: "GET", path: "/v2/acme/index/manifests/1", header: []string{"Accept", ociIndex}, status: 200, digest: fx.index.String(), ctype: ociIndex},
		{name: "Docker image, only OCI accepted", method: "GET", path: "/v2/acme/docker/manifests/1", header: []string{"Accept", ociManifest}, status: 200, digest: fx.docker.String(), ctype: dockerV2},
		{name: "Docker list by tag, lists not accepted: the amd64 image", method: "GET", path: "/v2/acme/list/manifests/1", header: []string{"Accept", dockerV2}, status: 200, digest: fx.listAMD64.String(), ctype: dockerV2},
		{name: "Docker list by tag, nothing it has accepted", method: "GET", path: "/v2/acme/list/manifests/1", header: []string{"Accept", ociManifest}, status: 400, code: "MANIFEST_INVALID"},
		{name: "Docker list by digest, lists not accepted: as is", method: "GET", path: "/v2/acme/list/manifests/" + fx.list.String(), header: []string{"Accept", dockerV2}, status: 200, digest: fx.list.String(), ctype: dockerList},
		{name: "Docker list, accepted", method: "HEAD", path: "/v2/acme/list/manifests/1", header: []string{"Accept", dockerList}, status: 200, digest: fx.list.String(), noBody: true},
		{name: "If-None-Match", method: "GET", path: "/v2/acme/oci/manifests/1", header: []string{"If-None-Match", `"` + fx.oci.String() + `"`}, status: 304, noBody: true},
		{name: "blob", method: "GET", path: "/v2/acme/oci/blobs/" + fx.layer.String(), status: 200, digest: fx.layer.String()},
		{name: "blob range", method: "GET", path: "/v2/acme/oci/blobs/" + fx.layer.String(), header: []string{"Range", "bytes=0-9"}, status: 206},
		{name: "blob range outside", method: "GET", path: "/v2/acme/oci/blobs/" + fx.layer.String(), header: []string{"Range", "bytes=99999999-"}, status: 416, code: "UNSUPPORTED"},
		{name: "missing manifest", method: "GET", path: "/v2/acme/oci/manifests/nope", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "missing blob", method: "GET", path: "/v2/acme/oci/blobs/" + missing, status: 404, code: "BLOB_UNKNOWN"},
		{name: "bad digest", method: "GET", path: "/v2/acme/oci/blobs/sha256:abc", status: 400, code: "DIGEST_INVALID"},
		{name: "bad name", method: "GET", path: "/v2/Acme/oci/manifests/1", status: 400, code: "NAME_INVALID"},
		{name: "push refused", method: "PUT", path: "/v2/acme/oci/manifests/1", status: 405, code: "UNSUPPORTED"},
		{name: "referrers, none", method: "GET", path: "/v2/acme/oci/referrers/" + fx.oci.String(), status: 200, ctype: ociIndex},
		{name: "base", method: "GET", path: "/v2/", status: 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, h, body := e.get(c.method, c.path, c.header...)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, body)
			}
			if c.code != "" && errorCode(body) != c.code {
				t.Errorf("code %q, want %s: %s", errorCode(body), c.code, body)
			}
			if c.digest != "" && h.Get("Docker-Content-Digest") != c.digest {
				t.Errorf("Docker-Content-Digest %q, want %s", h.Get("Docker-Content-Digest"), c.digest)
			}
			if c.ctype != "" && h.Get("Content-Type") != c.ctype {
				t.Errorf("Content-Type %q, want %s", h.Get("Content-Type"), c.ctype)
			}
			if c.noBody && len(body) != 0 {
				t.Errorf("%d bytes of body, want none", len(body))
			}
			if c.exactly != nil && !bytes.Equal(body, c.exactly) {
				t.Error("the manifest is not served byte-exact")
			}
			if c.status == 416 && h.Get("Content-Range") == "" {
				t.Error("416 without Content-Range")
			}
		})
	}
	// Upstream was always asked for every type: what is stored did not
	// depend on which client came first.
	if n := up.count("GET manifests"); n > 8 {
		t.Errorf("upstream saw %d manifest GETs for 5 tags and 3 children", n)
	}
}

// A HEAD of a cold blob is answered from upstream's HEAD: no download.
func TestColdBlobHeadDoesNotDownload(t *testing.T) {
	up := newUpstreamServer(t, false)
	img := randomImage(t, 100_000, 1)
	up.push("acme/app", "1", img)
	d := layerOf(t, img, 0)
	e := newEnv(t, envOptions{upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/acme/app/manifests/1")
	status, h, _ := e.get("HEAD", "/v2/acme/app/blobs/"+d.String())
	if status != 200 || h.Get("Content-Length") == "" || h.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("cold HEAD: %d %v", status, h)
	}
	size, _ := img.Layers()
	n, _ := size[0].Size()
	if h.Get("Content-Length") != fmt.Sprint(n) {
		t.Errorf("Content-Length %s, want %d", h.Get("Content-Length"), n)
	}
	if got := up.count("GET blobs"); got != 0 {
		t.Errorf("a HEAD downloaded the blob (%d GETs)", got)
	}
	if e.store.HasBlob(d) {
		t.Error("a HEAD stored the blob")
	}
}

// Something that is not a manifest (a captive portal) is answered 502 and
// stored nowhere; the next request asks upstream again.
func TestNonManifestIsNotStored(t *testing.T) {
	up := newUpstreamServer(t, false)
	up.push("acme/app", "1", randomImage(t, 100, 1))
	e := newEnv(t, envOptions{tagTTL: time.Hour, upstreams: map[string]*upstreamServer{"docker.io": up}})
	up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html><body>Welcome to the ship's Wi-Fi. Please accept the terms.</body></html>"))
		return true
	})
	for i := 0; i < 2; i++ {
		status, _, body := e.get("GET", "/v2/acme/app/manifests/1")
		if status != http.StatusBadGateway || strings.Contains(string(body), "Wi-Fi") && !strings.Contains(string(body), "not") {
			t.Fatalf("captive portal: %d %s", status, body)
		}
	}
	if n := up.count("GET manifests"); n != 2 {
		t.Errorf("upstream asked %d times, want 2 (nothing was stored)", n)
	}
	if tags, _ := e.store.Tags("docker.io/acme/app"); len(tags) != 0 {
		t.Errorf("tags stored: %v", tags)
	}
	up.setFault(nil)
	if status, _, _ := e.get("GET", "/v2/acme/app/manifests/1"); status != 200 {
		t.Errorf("after the portal is gone: %d", status)
	}
}

// A manifest whose bytes were stored as a blob first (any repository can
// serve any bytes as a layer) is still fetched as a manifest.
func TestManifestStoredAsABlobFirst(t *testing.T) {
	up := newUpstreamServer(t, false)
	child := randomImage(t, 100, 1)
	childBytes, _ := child.RawManifest()
	childDigest, _ := child.Digest()
	index := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: child, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	up.push("acme/app", "1", index)
	evil, err := mutate.AppendLayers(empty.Image, static.NewLayer(childBytes, types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	up.push("evil/x", "1", evil)
	e := newEnv(t, envOptions{tagTTL: time.Hour, upstreams: map[string]*upstreamServer{"docker.io": up}})
	e.get("GET", "/v2/evil/x/manifests/1")
	if status, _, _ := e.get("GET", "/v2/evil/x/blobs/"+childDigest.String()); status != 200 {
		t.Fatalf("the look-alike blob: %d", status)
	}
	e.get("GET", "/v2/acme/app/manifests/1")
	if status, h, _ := e.get("GET", "/v2/acme/app/manifests/"+childDigest.String()); status != 200 || h.Get("Content-Type") == "application/octet-stream" {
		t.Fatalf("the child by digest after its bytes were cached as a blob: %d %v", status, h)
	}
}
