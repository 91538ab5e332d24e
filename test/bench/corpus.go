package bench

// corpus.go builds the benchmark corpus: a few OCI images whose layers are
// random, incompressible bytes from a seeded PRNG (so every run pulls the
// same digests), pushes them to the upstream registry and writes the same
// blobs as plain files for nginx.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// imageSpec describes one corpus image: its repository, tag and layer sizes.
type imageSpec struct {
	repo   string
	tag    string
	layers []int
}

// pullSpecs is the set pulled cold and warm. Every layer is distinct content.
// bench/small has six layers so that its manifest is about 1.2 KB, a typical
// manifest size; it is the one used for the hot manifest tests.
var pullSpecs = []imageSpec{
	{repo: "bench/small", tag: "v1", layers: []int{1 * kib, 4 * kib, 16 * kib, 64 * kib, 256 * kib, 1 * mib}},
	{repo: "bench/medium", tag: "v1", layers: []int{8 * mib, 64 * kib, 1 * kib}},
	{repo: "bench/large", tag: "v1", layers: []int{64 * mib, 1 * kib}},
}

// fanoutSpec is never part of the pull set: its single layer is still cold
// when 32 clients ask for it at once.
var fanoutSpec = imageSpec{repo: "bench/fanout", tag: "v1", layers: []int{16 * mib}}

// uplinkSpec is pulled only through the throttled uplink, cold in every column.
var uplinkSpec = imageSpec{repo: "bench/uplink", tag: "v1", layers: []int{4 * mib, 1 * mib, 16 * kib}}

// blobRef is one blob of an image (config or layer).
type blobRef struct {
	digest string // sha256:...
	size   int64
}

// image is a corpus image as pushed to the upstream.
type image struct {
	repo, tag      string
	manifest       []byte
	manifestDigest string
	mediaType      string
	blobs          []blobRef // config first, then layers
	layers         []blobRef
}

// corpus is everything the load generator needs to know about the content.
type corpus struct {
	images  []image // pull set
	fanout  image
	uplink  image
	docroot string // nginx root: /blobs/<hex> and /manifest.json
}

// blobPath is the URL path of a blob on a registry.
func (im image) blobPath(d string) string { return "/v2/" + im.repo + "/blobs/" + d }

// manifestPath is the URL path of a manifest by tag or digest.
func (im image) manifestPath(ref string) string { return "/v2/" + im.repo + "/manifests/" + ref }

// layerOfSize returns the first layer of exactly size bytes in the pull set.
func (c *corpus) layerOfSize(size int64) (image, blobRef) {
	for _, im := range c.images {
		for _, l := range im.layers {
			if l.size == size {
				return im, l
			}
		}
	}
	panic(fmt.Sprintf("no layer of %d bytes in corpus", size))
}

// totalBytes is the size of all manifests and blobs of the pull set.
func (c *corpus) totalBytes() int64 {
	var n int64
	for _, im := range c.images {
		n += int64(len(im.manifest))
		for _, b := range im.blobs {
			n += b.size
		}
	}
	return n
}

// randomBytes returns n incompressible bytes that depend only on seed.
func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	copy(key[:], "outpost-bench-corpus")
	for i := 0; i < 8; i++ {
		key[24+i] = byte(seed >> (8 * i))
	}
	buf := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(buf) // never fails
	return buf
}

// buildImage assembles an OCI image from deterministic random layers.
// seed is advanced once per layer so every layer in the corpus differs.
func buildImage(tb testing.TB, spec imageSpec, seed *uint64, docroot string) (v1.Image, image) {
	tb.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var layers []v1.Layer
	for _, size := range spec.layers {
		*seed++
		data := randomBytes(*seed, size)
		l := static.NewLayer(data, types.OCILayer)
		d, err := l.Digest()
		if err != nil {
			tb.Fatal(err)
		}
		writeBlobFile(tb, docroot, d.String(), data)
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		tb.Fatal(err)
	}

	raw, err := img.RawManifest()
	if err != nil {
		tb.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		tb.Fatal(err)
	}
	md, err := img.Digest()
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	writeBlobFile(tb, docroot, m.Config.Digest.String(), cfg)

	im := image{
		repo:           spec.repo,
		tag:            spec.tag,
		manifest:       raw,
		manifestDigest: md.String(),
		mediaType:      string(m.MediaType),
		blobs:          []blobRef{{m.Config.Digest.String(), m.Config.Size}},
	}
	for _, l := range m.Layers {
		ref := blobRef{l.Digest.String(), l.Size}
		im.blobs = append(im.blobs, ref)
		im.layers = append(im.layers, ref)
	}
	return img, im
}

// writeBlobFile stores a blob for nginx as docroot/blobs/<hex>.
func writeBlobFile(tb testing.TB, docroot, digest string, data []byte) {
	tb.Helper()
	p := filepath.Join(docroot, "blobs", strings.TrimPrefix(digest, "sha256:"))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// nginxBlobPath is the URL path of a blob on the nginx file server.
func nginxBlobPath(digest string) string {
	return "/blobs/" + strings.TrimPrefix(digest, "sha256:")
}

// nginxManifestPath is a manifest-sized static file on nginx.
const nginxManifestPath = "/manifest.json"

// buildCorpus generates the images, pushes them to the upstream registry at
// upstreamURL and lays out nginx's docroot under dir.
func buildCorpus(ctx context.Context, tb testing.TB, dir, upstreamURL string) *corpus {
	tb.Helper()
	c := &corpus{docroot: filepath.Join(dir, "www")}
	host := strings.TrimPrefix(upstreamURL, "http://")
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}
	defer tr.CloseIdleConnections()

	var seed uint64
	push := func(spec imageSpec) image {
		img, im := buildImage(tb, spec, &seed, c.docroot)
		ref, err := name.ParseReference(host+"/"+spec.repo+":"+spec.tag, name.Insecure)
		if err != nil {
			tb.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr), remote.WithJobs(3)); err != nil {
			tb.Fatalf("push %s: %v", ref, err)
		}
		return im
	}
	for _, spec := range pullSpecs {
		c.images = append(c.images, push(spec))
	}
	c.fanout = push(fanoutSpec)
	c.uplink = push(uplinkSpec)

	// The manifest-sized file for nginx is the hot-manifest image's manifest.
	if err := os.WriteFile(filepath.Join(c.docroot, strings.TrimPrefix(nginxManifestPath, "/")), c.images[0].manifest, 0o644); err != nil {
		tb.Fatal(err)
	}
	return c
}
