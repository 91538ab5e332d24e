package cache

import (
	"regexp"
	"strings"
	"testing"

	"github.com/outpost-oci/outpost/store"
)

// FuzzParseRoute: any path and ns either parse into a route whose names
// satisfy the spec's grammar, or fail with an OCI error; never a panic.
func FuzzParseRoute(f *testing.F) {
	for _, seed := range []struct{ path, ns string }{
		{"/v2/", ""}, {"/v2/_catalog", ""}, {"/v2/alpine/manifests/3", ""},
		{"/v2/library/alpine/manifests/3", "docker.io"}, {"/v2/ghcr.io/acme/tool/blobs/sha256:" + strings.Repeat("a", 64), ""},
		{"/v2/acme/app/tags/list", "ghcr.io"}, {"/v2/acme/app/referrers/sha256:" + strings.Repeat("0", 64), ""},
		{"/v2/acme/app/blobs/uploads/", ""}, {"/v2/library/..%2fetc/manifests/3", ""}, {"/v2/a//b/manifests/x", ""},
		{"/v2/docker.io/manifests/latest", "registry-1.docker.io"}, {"/v2/" + strings.Repeat("a/", 200) + "x/manifests/1", ""},
	} {
		f.Add(seed.path, seed.ns)
	}
	s, err := store.Open(f.TempDir(), store.Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	c, err := New(Options{Store: s, Upstreams: []UpstreamOptions{
		{Upstream: namedUpstream("docker.io"), Default: true}, {Upstream: namedUpstream("ghcr.io")},
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path, ns string) {
		r, err := c.parseRoute(path, ns)
		if err != nil {
			if _, ok := err.(*regError); !ok {
				t.Fatalf("%q: error %T is not an OCI error", path, err)
			}
			return
		}
		switch r.kind {
		case kindManifest, kindBlob, kindTags, kindReferrers:
			if !repoPattern.MatchString(r.repo) || len(r.key) > maxNameLength || r.up == nil {
				t.Fatalf("%q: route %+v has an invalid repository", path, r)
			}
			if strings.Contains(r.key, "..") || strings.ContainsAny(r.key, "%\\\x00") {
				t.Fatalf("%q: key %q could escape the store", path, r.key)
			}
		}
		if (r.kind == kindBlob || r.kind == kindReferrers) && !digestPattern.MatchString(r.ref) {
			t.Fatalf("%q: blob route with ref %q", path, r.ref)
		}
	})
}

// The spec's grammar as regular expressions: what the hand-written
// validators must agree with.
var (
	repoPattern   = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagPattern    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	digestPattern = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)
)

// FuzzNames: the validators accept exactly what the spec's grammar does.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"library/alpine", "a", "a.b_c__d---e/f", "a..b", "a___b", "-a", "a-", "a/", "/a", "a//b", "A",
		"sha256:" + strings.Repeat("a", 64), "sha512:" + strings.Repeat("0", 128), "sha256:" + strings.Repeat("A", 64),
		"latest", "v1.2.3-rc_1", ".x", strings.Repeat("t", 129), "_x", "a__b", "a.-b", "a_-b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validRepo(s), repoPattern.MatchString(s); got != want {
			t.Errorf("validRepo(%q) = %v, grammar says %v", s, got, want)
		}
		if got, want := validTag(s), tagPattern.MatchString(s); got != want {
			t.Errorf("validTag(%q) = %v, grammar says %v", s, got, want)
		}
		if got, want := validDigest(s), digestPattern.MatchString(s); got != want {
			t.Errorf("validDigest(%q) = %v, grammar says %v", s, got, want)
		}
	})
}

// FuzzParseRange: a range, whatever it says, lies inside the blob.
func FuzzParseRange(f *testing.F) {
	for _, seed := range []string{"bytes=0-0", "bytes=100-", "bytes=-5", "bytes=0-99999999", "bytes=5-1", "bytes=-0",
		"bytes=0-1,5-6", "bytes=", "items=0-1", "bytes=-", "bytes=9223372036854775807-", "bytes=-9223372036854775808"} {
		f.Add(seed, int64(100_000))
		f.Add(seed, int64(0))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		start, n, partial, ok := parseRange([]byte(h), size)
		if !ok {
			return
		}
		if start < 0 || n < 0 || start+n > size || (!partial && (start != 0 || n != size)) {
			t.Fatalf("Range %q on %d bytes: start %d, n %d, partial %v", h, size, start, n, partial)
		}
	})
}
