package cache

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/outpost-oci/outpost/store"
)

// Accept negotiation. What is stored is what upstream has, fetched with
// every manifest type offered, and it is served byte-exact whenever the
// client accepts its media type (or sends no Accept, or */*). Otherwise
// Outpost answers as the CNCF distribution registry does: an OCI manifest
// or index is "not found" for a client that does not accept it, a Docker
// manifest list asked for by tag is replaced by its linux/amd64 image, and
// a Docker image manifest is served regardless.

// accepts reports whether the Accept header values allow media type mt:
// listed (not with q=0), or */*, or application/*, or no usable Accept at
// all. It runs on every manifest request, so it parses by hand.
func accepts(values [][]byte, mt string) bool {
	seen := false
	for _, v := range values {
		for len(v) > 0 {
			var part []byte
			if i := bytes.IndexByte(v, ','); i >= 0 {
				part, v = v[:i], v[i+1:]
			} else {
				part, v = v, nil
			}
			typ, params, _ := bytes.Cut(part, []byte(";"))
			typ = bytes.TrimSpace(typ)
			if bytes.IndexByte(typ, '/') <= 0 {
				continue // not a media type
			}
			seen = true
			if len(params) > 0 && refused(params) {
				continue
			}
			if bytes.EqualFold(typ, []byte(mt)) || string(typ) == "*/*" || bytes.EqualFold(typ, []byte("application/*")) {
				return true
			}
		}
	}
	return !seen
}

// refused reports whether media-type parameters say q=0.
func refused(params []byte) bool {
	for _, p := range bytes.Split(params, []byte(";")) {
		k, v, ok := bytes.Cut(bytes.TrimSpace(p), []byte("="))
		if ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("q")) {
			if f, err := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64); err == nil && f == 0 {
				return true
			}
		}
	}
	return false
}

// The platform distribution picks from a manifest list for a client that
// does not accept lists.
const (
	defaultOS   = "linux"
	defaultArch = "amd64"
)

// negotiate returns what to serve to a client that does not accept m's
// media type. The returned file, if any, is the caller's to close.
func (c *Cache) negotiate(r route, m store.Manifest, accept [][]byte) (store.Manifest, *os.File, error) {
	switch types.MediaType(m.MediaType) {
	case types.OCIManifestSchema1, types.OCIImageIndex:
		return m, nil, newError(http.StatusNotFound, transport.ManifestUnknownErrorCode,
			"the manifest is %s, which the Accept header does not allow", m.MediaType)
	case types.DockerManifestList:
		if isDigest(r.ref) {
			return m, nil, nil // distribution rewrites only by tag
		}
	default:
		return m, nil, nil // Docker image manifests are served regardless
	}
	full, err := c.store.Manifest(m.Digest)
	if err != nil {
		return m, nil, err
	}
	list, err := v1.ParseIndexManifest(bytes.NewReader(full.Bytes))
	if err != nil {
		return m, nil, err
	}
	var child *v1.Hash
	for _, desc := range list.Manifests {
		if desc.Platform != nil && desc.Platform.OS == defaultOS && desc.Platform.Architecture == defaultArch {
			child = &desc.Digest
			break
		}
	}
	if child == nil {
		return m, nil, newError(http.StatusNotFound, transport.ManifestUnknownErrorCode,
			"the manifest list has no %s/%s image, and the Accept header does not allow lists", defaultOS, defaultArch)
	}
	if _, err := c.manifestByDigest(r, *child); err != nil {
		return m, nil, err
	}
	cm, f, err := c.store.OpenManifest(*child)
	if errors.Is(err, store.ErrNotFound) { // linked through the list, not fetched yet
		if _, err = c.fetchByDigest(r, *child); err == nil {
			cm, f, err = c.store.OpenManifest(*child)
		}
	}
	if err != nil {
		return m, nil, err
	}
	if cm.MediaType == string(types.DockerManifestSchema2) && !accepts(accept, cm.MediaType) {
		if f != nil {
			f.Close()
		}
		return m, nil, newError(http.StatusBadRequest, transport.ManifestInvalidErrorCode, "Schema 2 manifest not supported by client")
	}
	return cm, f, nil
}
