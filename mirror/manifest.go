package mirror

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxManifestSize bounds what we read of a manifest; registries commonly
// refuse manifests above 4 MiB.
const maxManifestSize = 4 << 20

// ManifestTypes are the manifest media types Outpost stores and serves.
var ManifestTypes = []types.MediaType{
	types.OCIImageIndex, types.OCIManifestSchema1, types.DockerManifestList, types.DockerManifestSchema2,
}

// acceptManifests asks for every manifest kind, so that what is stored is
// exactly what upstream has, whichever client asked first.
var acceptManifests = func() string {
	s := make([]string, len(ManifestTypes))
	for i, t := range ManifestTypes {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}()

func isManifestType(mt string) bool {
	for _, t := range ManifestTypes {
		if string(t) == mt {
			return true
		}
	}
	return false
}

// errNotManifest is the cause of a response that is not a manifest of a
// supported type: a captive portal's HTML, JSON from a misrouted request.
var errNotManifest = errors.New("not a manifest")

// CheckManifest decides whether b, served with contentType, is a manifest
// of a supported media type, and returns that type. A specific Content-Type
// must be a manifest type and agree with the document's own mediaType; a
// generic one (application/json, none) defers to the document, whose
// mediaType field, or else shape, names the type.
func CheckManifest(b []byte, contentType string) (string, error) {
	var doc struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Config        json.RawMessage `json:"config"`
		Manifests     json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("%w: the body is not JSON (%v)", errNotManifest, firstLine(err))
	}
	if doc.SchemaVersion != 2 {
		return "", fmt.Errorf("%w: schemaVersion %d, want 2", errNotManifest, doc.SchemaVersion)
	}
	mt := mediaTypeOf(contentType)
	if !isManifestType(mt) {
		if specific(mt) {
			return "", fmt.Errorf("%w: Content-Type %q is not a supported manifest type", errNotManifest, mt)
		}
		switch {
		case doc.MediaType != "":
			mt = doc.MediaType
		case doc.Manifests != nil:
			mt = string(types.OCIImageIndex)
		case doc.Config != nil:
			mt = string(types.OCIManifestSchema1)
		}
		if !isManifestType(mt) {
			return "", fmt.Errorf("%w: media type %q is not a supported manifest type", errNotManifest, mt)
		}
	}
	if doc.MediaType != "" && doc.MediaType != mt {
		return "", fmt.Errorf("%w: served as %s but says it is %s", errNotManifest, mt, doc.MediaType)
	}
	if types.MediaType(mt).IsIndex() {
		if doc.Manifests == nil {
			return "", fmt.Errorf("%w: an index without manifests", errNotManifest)
		}
		if _, err := v1.ParseIndexManifest(bytes.NewReader(b)); err != nil {
			return "", fmt.Errorf("%w: %v", errNotManifest, firstLine(err))
		}
		return mt, nil
	}
	if doc.Config == nil {
		return "", fmt.Errorf("%w: an image manifest without config", errNotManifest)
	}
	if _, err := v1.ParseManifest(bytes.NewReader(b)); err != nil {
		return "", fmt.Errorf("%w: %v", errNotManifest, firstLine(err))
	}
	return mt, nil
}

// specific reports whether a Content-Type says what the body is, as
// opposed to the generic types some registries and proxies send.
func specific(mt string) bool {
	switch mt {
	case "", "application/json", "text/plain", "application/octet-stream", "binary/octet-stream":
		return false
	}
	return true
}

func mediaTypeOf(contentType string) string {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
