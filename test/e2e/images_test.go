package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Media types used by the fixtures.
const (
	mtDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerConfig   = "application/vnd.docker.container.image.v1+json"
	mtDockerLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mtOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mtOCIConfig      = "application/vnd.oci.image.config.v1+json"
	mtOCILayer       = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// manifestAccept is what a client that understands every format sends.
var manifestAccept = strings.Join([]string{mtOCIManifest, mtOCIIndex, mtDockerManifest, mtDockerList}, ", ")

// blob is one content-addressed blob (config or layer).
type blob struct {
	Digest    string
	MediaType string
	Data      []byte
}

func (b blob) hex() string { return strings.TrimPrefix(b.Digest, "sha256:") }

// manifest is an image manifest or an index with its children, exactly as
// pushed to the upstream registries.
type manifest struct {
	Digest    string
	MediaType string
	Raw       []byte
	Platform  string // "linux/arm64" for an image; empty for an index

	Config   blob
	Layers   []blob
	DiffIDs  []string // uncompressed layer digests
	Children []*manifest
}

// all returns this manifest and its children.
func (m *manifest) all() []*manifest {
	out := []*manifest{m}
	for _, c := range m.Children {
		out = append(out, c.all()...)
	}
	return out
}

// blobs returns every blob reachable from m.
func (m *manifest) blobs() []blob {
	var out []blob
	for _, x := range m.all() {
		if x.Config.Digest != "" {
			out = append(out, x.Config)
		}
		out = append(out, x.Layers...)
	}
	return out
}

// child returns the child manifest for a platform such as "linux/arm64".
func (m *manifest) child(platform string) *manifest {
	for _, c := range m.Children {
		if c.Platform == platform {
			return c
		}
	}
	panic("no child for " + platform + " in " + m.Digest)
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// randomBytes returns n bytes that depend only on seed (incompressible).
func randomBytes(seed string, n int) []byte {
	sum := sha256.Sum256([]byte(seed))
	r := rand.New(rand.NewChaCha8(sum))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// newLayer builds a gzipped tar with bin/hello (random payload of size bytes)
// and a text file naming the seed. It returns the blob and its diff ID.
func newLayer(seed string, size int, mediaType string) (blob, string) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"etc/outpost-e2e", 0o644, []byte(seed + "\n")},
		{"bin/hello", 0o755, randomBytes(seed, size)},
	}
	for _, dir := range []string{"bin/", "etc/"} {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755}))
	}
	for _, f := range files {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}))
		_, err := tw.Write(f.data)
		must(err)
	}
	must(tw.Close())
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	must(err)
	_, err = zw.Write(tarBuf.Bytes())
	must(err)
	must(zw.Close())
	return blob{Digest: digestOf(gz.Bytes()), MediaType: mediaType, Data: gz.Bytes()}, digestOf(tarBuf.Bytes())
}

type descriptor struct {
	MediaType string    `json:"mediaType"`
	Digest    string    `json:"digest"`
	Size      int       `json:"size"`
	Platform  *platform `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

func describe(b blob) descriptor {
	return descriptor{MediaType: b.MediaType, Digest: b.Digest, Size: len(b.Data)}
}

// newImage builds a single-platform image with one layer of about layerSize bytes.
func newImage(seed, arch string, oci bool, layerSize int) *manifest {
	mtManifest, mtConfig, mtLayer := mtDockerManifest, mtDockerConfig, mtDockerLayer
	if oci {
		mtManifest, mtConfig, mtLayer = mtOCIManifest, mtOCIConfig, mtOCILayer
	}
	layer, diffID := newLayer(seed+"/"+arch, layerSize, mtLayer)
	cfg, err := json.Marshal(map[string]any{
		"architecture": arch,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{"/bin/hello"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	must(err)
	config := blob{Digest: digestOf(cfg), MediaType: mtConfig, Data: cfg}
	raw, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{2, mtManifest, describe(config), []descriptor{describe(layer)}})
	must(err)
	return &manifest{
		Digest: digestOf(raw), MediaType: mtManifest, Raw: raw, Platform: "linux/" + arch,
		Config: config, Layers: []blob{layer}, DiffIDs: []string{diffID},
	}
}

// newIndex builds a manifest list (docker) or image index (OCI) of children.
func newIndex(oci bool, children ...*manifest) *manifest {
	mt := mtDockerList
	if oci {
		mt = mtOCIIndex
	}
	var descs []descriptor
	for _, c := range children {
		os, arch, _ := strings.Cut(c.Platform, "/")
		descs = append(descs, descriptor{
			MediaType: c.MediaType, Digest: c.Digest, Size: len(c.Raw),
			Platform: &platform{OS: os, Architecture: arch},
		})
	}
	raw, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{2, mt, descs})
	must(err)
	return &manifest{Digest: digestOf(raw), MediaType: mt, Raw: raw, Children: children}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// fixtureSet is what the upstreams hold. Hub is served as docker.io, GHCR as ghcr.io.
type fixtureSet struct {
	Alpine  *manifest // docker.io library/alpine:3 and :latest, docker manifest list amd64+arm64
	Busybox *manifest // docker.io library/busybox:1.36, docker v2, 4 MiB layer
	Tool    *manifest // docker.io acme/tool:v1, OCI manifest, 2 MiB layer
	App     *manifest // ghcr.io org/app:1, OCI index amd64+arm64
}

// taggedRef is one tag of a fixture in one upstream.
type taggedRef struct {
	Upstream string // "docker.io" or "ghcr.io"
	Repo     string // repository name at the upstream, e.g. library/alpine
	Tag      string
	M        *manifest
}

var fixtures = sync.OnceValue(func() fixtureSet {
	return fixtureSet{
		Alpine:  newIndex(false, newImage("alpine", "amd64", false, 64<<10), newImage("alpine", "arm64", false, 64<<10)),
		Busybox: newImage("busybox", "amd64", false, 4<<20),
		Tool:    newImage("tool", "amd64", true, 2<<20),
		App:     newIndex(true, newImage("app", "amd64", true, 64<<10), newImage("app", "arm64", true, 64<<10)),
	}
})

// tags lists every tag the fixtures are pushed under.
func (f fixtureSet) tags() []taggedRef {
	return []taggedRef{
		{"docker.io", "library/alpine", "3", f.Alpine},
		{"docker.io", "library/alpine", "latest", f.Alpine},
		{"docker.io", "library/busybox", "1.36", f.Busybox},
		{"docker.io", "acme/tool", "v1", f.Tool},
		{"ghcr.io", "org/app", "1", f.App},
	}
}

// pushImage uploads m (children first, then blobs, then the manifest itself)
// to the registry at addr under repo:tag (tag may be empty: push by digest).
func pushImage(t *testing.T, addr, repo, tag string, m *manifest) {
	t.Helper()
	for _, c := range m.Children {
		pushImage(t, addr, repo, "", c)
	}
	if m.Config.Digest != "" {
		pushBlob(t, addr, repo, m.Config)
	}
	for _, l := range m.Layers {
		pushBlob(t, addr, repo, l)
	}
	ref := m.Digest
	if tag != "" {
		ref = tag
	}
	req, err := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(m.Raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", m.MediaType)
	expectStatus(t, req, http.StatusCreated)
}

func pushBlob(t *testing.T, addr, repo string, b blob) {
	t.Helper()
	base := "http://" + addr + "/v2/" + repo + "/blobs/"
	req, _ := http.NewRequest(http.MethodPost, base+"uploads/", nil)
	resp := expectStatus(t, req, http.StatusAccepted)
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", b.Digest)
	loc.RawQuery = q.Encode()
	req, _ = http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b.Data))
	req.Header.Set("Content-Type", "application/octet-stream")
	expectStatus(t, req, http.StatusCreated)
}

func expectStatus(t *testing.T, req *http.Request, want int) *http.Response {
	t.Helper()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", req.Method, req.URL, resp.StatusCode, want, body)
	}
	return resp
}

// fetch does one request against a loopback server and reads the whole body.
// A body read error is returned as err together with the partial body.
func fetch(method, rawURL string, header map[string]string) (*http.Response, []byte, error) {
	return fetchWithin(httpClient.Timeout, method, rawURL, header)
}

// fetchWithin is fetch with a deadline for the whole exchange.
func fetchWithin(timeout time.Duration, method, rawURL string, header map[string]string) (*http.Response, []byte, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, body, fmt.Errorf("reading body: %w", err)
	}
	return resp, body, nil
}
