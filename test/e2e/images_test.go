package e2e

import (
	"bytes"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/outpost-oci/outpost/test/testenv"
)

// The fixtures are built with go-containerregistry; manifest and blob only
// read its results out once, so that tests compare plain strings and bytes.

// blob is one content-addressed blob (config or layer).
type blob struct {
	Digest string
	Data   []byte
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

	obj artifact // for pushImage and newIndex
}

// artifact is a v1.Image or a v1.ImageIndex.
type artifact interface {
	partial.Describable
	partial.WithRawManifest
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
	h, _, _ := v1.SHA256(bytes.NewReader(b)) // reading memory cannot fail
	return h.String()
}

// newImage builds a linux/arch image with one layer of a layerSize-byte
// file: a gzipped tarball that containerd can unpack. The layer content
// depends only on seed, so runs are reproducible.
func newImage(seed int64, arch string, oci bool, layerSize int64) *manifest {
	mt, cfgMT, layerMT := types.DockerManifestSchema2, types.DockerConfigJSON, types.DockerLayer
	if oci {
		mt, cfgMT, layerMT = types.OCIManifestSchema1, types.OCIConfigJSON, types.OCILayer
	}
	layer := check(random.Layer(layerSize, layerMT, random.WithSource(rand.NewSource(seed))))
	base := check(mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: arch, OS: "linux", RootFS: v1.RootFS{Type: "layers"},
	}))
	img := check(mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(base, mt), cfgMT), layer))
	m := describe(img, "linux/"+arch)
	m.Config = blob{Digest: check(img.ConfigName()).String(), Data: check(img.RawConfigFile())}
	data := check(io.ReadAll(check(layer.Compressed())))
	m.Layers = []blob{{Digest: check(layer.Digest()).String(), Data: data}}
	m.DiffIDs = []string{check(layer.DiffID()).String()}
	return m
}

// newIndex builds a manifest list (docker) or image index (OCI) of children.
func newIndex(oci bool, children ...*manifest) *manifest {
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	if oci {
		idx = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	}
	for _, c := range children {
		os, arch, _ := strings.Cut(c.Platform, "/")
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        noArtifactType{c.obj.(v1.Image)},
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: os, Architecture: arch}},
		})
	}
	m := describe(idx, "")
	m.Children = children
	return m
}

// noArtifactType keeps go-containerregistry from putting the config media
// type as artifactType into the image's index entry. Indexes from docker
// buildx have none, and skopeo rewrites an index that has them when copying.
type noArtifactType struct{ v1.Image }

func (noArtifactType) ArtifactType() (string, error) { return "", nil }

// describe reads digest, media type and bytes of an image or index.
func describe(obj artifact, platform string) *manifest {
	raw := check(obj.RawManifest())
	return &manifest{
		Digest:    check(obj.Digest()).String(),
		MediaType: string(check(obj.MediaType())),
		Raw:       raw,
		Platform:  platform,
		obj:       obj,
	}
}

// check panics on a fixture-building error: fixtures are built once,
// outside any one test.
func check[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
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
		Alpine:  newIndex(false, newImage(1, "amd64", false, 64<<10), newImage(2, "arm64", false, 64<<10)),
		Busybox: newImage(3, "amd64", false, 4<<20),
		Tool:    newImage(4, "amd64", true, 2<<20),
		App:     newIndex(true, newImage(5, "amd64", true, 64<<10), newImage(6, "arm64", true, 64<<10)),
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

// pushImage uploads m with all it references to the registry at addr as repo:tag.
func pushImage(t *testing.T, addr, repo, tag string, m *manifest) {
	t.Helper()
	ref, err := name.ParseReference(addr+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Push(ref, m.obj, remote.WithTransport(testenv.Client.Transport)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}
