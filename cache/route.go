package cache

import (
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

type kind int

const (
	kindUnknown kind = iota
	kindBase
	kindCatalog
	kindManifest
	kindBlob
	kindTags
	kindReferrers
	kindUpload
)

// route is a parsed request: which upstream, which repository, what is asked.
type route struct {
	kind kind
	up   *upstream
	name string // the repository name as the client wrote it (for tags/list)
	repo string // the repository at the upstream, e.g. library/alpine
	key  string // the canonical store key, e.g. docker.io/library/alpine
	ref  string // tag or digest
}

const maxNameLength = 255

// dockerHubAliases all name Docker Hub; regctl sends ns=registry-1.docker.io.
var dockerHubAliases = map[string]bool{"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

func canonicalHost(host string) string {
	if dockerHubAliases[host] {
		return "docker.io"
	}
	return host
}

// parseRoute maps a request path and the ns query parameter to a route.
// Names are validated against the spec's grammar before anything touches
// the disk.
func (c *Cache) parseRoute(path, ns string) (route, error) {
	if path == "/v2/" || path == "/v2" {
		return route{kind: kindBase}, nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{}, newError(http.StatusNotFound, transport.UnsupportedErrorCode, "not an OCI distribution API path")
	}
	if rest == "_catalog" {
		return route{kind: kindCatalog}, nil
	}
	parts := strings.Split(rest, "/")
	var r route
	switch n := len(parts); {
	case n >= 3 && parts[n-2] == "tags" && parts[n-1] == "list":
		r.kind, parts = kindTags, parts[:n-2]
	case n >= 3 && parts[n-2] == "blobs" && parts[n-1] == "uploads",
		n >= 4 && parts[n-3] == "blobs" && parts[n-2] == "uploads":
		return route{kind: kindUpload}, nil
	case n >= 3 && parts[n-2] == "manifests":
		r.kind, r.ref, parts = kindManifest, parts[n-1], parts[:n-2]
	case n >= 3 && parts[n-2] == "blobs":
		r.kind, r.ref, parts = kindBlob, parts[n-1], parts[:n-2]
	case n >= 3 && parts[n-2] == "referrers":
		r.kind, r.ref, parts = kindReferrers, parts[n-1], parts[:n-2]
	default:
		return route{}, newError(http.StatusNotFound, transport.UnsupportedErrorCode, "not an OCI distribution API path")
	}
	r.name = strings.Join(parts, "/")
	if err := c.resolveName(&r, parts, ns); err != nil {
		return route{}, err
	}
	return r, c.checkRef(r)
}

// resolveName picks the upstream: ns= first (stripping a leading component
// equal to it), then a leading component naming a configured upstream, then
// the default upstream.
func (c *Cache) resolveName(r *route, parts []string, ns string) error {
	table := c.upstreams.Load()
	first := canonicalHost(parts[0])
	switch {
	case ns != "":
		r.up = table.lookup(ns)
		if r.up == nil {
			return newError(http.StatusNotFound, transport.NameUnknownErrorCode, "registry %q is not configured on this Outpost", ns)
		}
		if len(parts) > 1 && first == r.up.name {
			parts = parts[1:]
		}
	case len(parts) > 1 && table.lookup(first) != nil:
		r.up, parts = table.lookup(first), parts[1:]
	default:
		r.up = table.fallback()
		if r.up == nil {
			return newError(http.StatusNotFound, transport.NameUnknownErrorCode, "%q names no configured registry and there is no default", r.name)
		}
	}
	r.repo = strings.Join(parts, "/")
	if r.up.name == "docker.io" && len(parts) == 1 {
		r.repo = "library/" + r.repo
	}
	r.key = r.up.name + "/" + r.repo
	if len(r.key) > maxNameLength || !validRepo(r.repo) {
		return newError(http.StatusBadRequest, transport.NameInvalidErrorCode, "invalid repository name %q", r.name)
	}
	return nil
}

func (c *Cache) checkRef(r route) error {
	switch {
	case r.kind == kindBlob || r.kind == kindReferrers:
		if !validDigest(r.ref) {
			return newError(http.StatusBadRequest, transport.DigestInvalidErrorCode, "invalid digest %q", r.ref)
		}
	case r.kind == kindManifest && strings.Contains(r.ref, ":"):
		if !validDigest(r.ref) {
			return newError(http.StatusBadRequest, transport.DigestInvalidErrorCode, "invalid digest %q", r.ref)
		}
	case r.kind == kindManifest && !validTag(r.ref):
		return newError(http.StatusNotFound, transport.ManifestUnknownErrorCode, "invalid tag %q", r.ref)
	}
	return nil
}
