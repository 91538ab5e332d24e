package cache

import (
	"context"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/outpost-oci/outpost/store"
)

// namedUpstream is enough of an Upstream for routing, which only needs names.
type namedUpstream string

func (n namedUpstream) Name() string { return string(n) }
func (namedUpstream) Down() bool     { return false }
func (namedUpstream) Manifest(context.Context, string, string) ([]byte, v1.Descriptor, error) {
	panic("routing test does not fetch")
}
func (namedUpstream) Head(context.Context, string, string) (v1.Descriptor, error) {
	panic("routing test does not fetch")
}
func (namedUpstream) Blob(context.Context, string, v1.Hash, int64, int64) (io.ReadCloser, int64, error) {
	panic("routing test does not fetch")
}
func (namedUpstream) BlobHead(context.Context, string, v1.Hash) (int64, error) {
	panic("routing test does not fetch")
}

func TestParseRoute(t *testing.T) {
	s, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := New(Options{Store: s, Upstreams: []UpstreamOptions{
		{Upstream: namedUpstream("docker.io"), Default: true},
		{Upstream: namedUpstream("ghcr.io")},
		{Upstream: namedUpstream("registry.local:5001")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("a", 64)
	cases := []struct {
		path, ns string
		key, ref string
		kind     kind
		err      string
	}{
		{"/v2/", "", "", "", kindBase, ""},
		{"/v2/_catalog", "", "", "", kindCatalog, ""},
		{"/v2/alpine/manifests/3", "", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/library/alpine/manifests/3", "", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/docker.io/alpine/manifests/3", "", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/registry-1.docker.io/library/alpine/manifests/3", "", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/library/alpine/manifests/3", "docker.io", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/library/alpine/manifests/3", "index.docker.io", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/docker.io/library/alpine/manifests/3", "docker.io", "docker.io/library/alpine", "3", kindManifest, ""},
		{"/v2/ghcr.io/org/app/manifests/1", "", "ghcr.io/org/app", "1", kindManifest, ""},
		{"/v2/org/app/manifests/1", "ghcr.io", "ghcr.io/org/app", "1", kindManifest, ""},
		{"/v2/registry.local:5001/team/tool/blobs/" + digest, "", "registry.local:5001/team/tool", digest, kindBlob, ""},
		{"/v2/ghcr.io/manifests/1", "", "docker.io/library/ghcr.io", "1", kindManifest, ""}, // one component is a name, not a host
		{"/v2/acme/app/tags/list", "", "docker.io/acme/app", "", kindTags, ""},
		{"/v2/acme/manifests/x/manifests/1", "", "docker.io/acme/manifests/x", "1", kindManifest, ""},
		{"/v2/acme/app/referrers/" + digest, "", "docker.io/acme/app", digest, kindReferrers, ""},
		{"/v2/acme/app/blobs/uploads/", "", "", "", kindUpload, ""},
		{"/v2/acme/app/manifests/1", "quay.io", "", "", 0, "NAME_UNKNOWN"},
		{"/v2/acme/App/manifests/1", "", "", "", 0, "NAME_INVALID"},
		{"/v2/acme/../x/manifests/1", "", "", "", 0, "NAME_INVALID"},
		{"/v2/acme/app/manifests/-bad", "", "", "", 0, "MANIFEST_UNKNOWN"},
		{"/v2/acme/app/blobs/sha256:zz", "", "", "", 0, "DIGEST_INVALID"},
		{"/v2/acme/app/blobs/md5:" + strings.Repeat("a", 32), "", "", "", 0, "DIGEST_INVALID"},
		{"/v2/acme/app", "", "", "", 0, "UNSUPPORTED"},
		{"/v1/x", "", "", "", 0, "UNSUPPORTED"},
	}
	for _, tc := range cases {
		r, err := c.parseRoute(tc.path, tc.ns)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s ns=%s: err %v, want %s", tc.path, tc.ns, err, tc.err)
			}
			continue
		}
		if err != nil || r.key != tc.key || r.ref != tc.ref || r.kind != tc.kind {
			t.Errorf("%s ns=%s: got %q %q %v (%v), want %q %q %v", tc.path, tc.ns, r.key, r.ref, r.kind, err, tc.key, tc.ref, tc.kind)
		}
	}
}
