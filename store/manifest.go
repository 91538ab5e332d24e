package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// manifestFields is the union of the fields of image manifests and indexes
// (OCI and Docker) that the store indexes.
type manifestFields struct {
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType"`
	Config       *v1.Descriptor    `json:"config"`
	Layers       []v1.Descriptor   `json:"layers"`
	Manifests    []v1.Descriptor   `json:"manifests"`
	Subject      *v1.Descriptor    `json:"subject"`
	Annotations  map[string]string `json:"annotations"`
}

type parsedManifest struct {
	manifestMeta
	annotations map[string]string
}

// parseManifest extracts children, subject and artifactType. The artifact
// type of an image manifest without one is its config's media type, as the
// referrers API defines it.
func parseManifest(b []byte, mediaType string) (parsedManifest, *v1.Hash, error) {
	var m manifestFields
	if err := json.Unmarshal(b, &m); err != nil {
		return parsedManifest{}, nil, err
	}
	p := parsedManifest{manifestMeta: manifestMeta{MediaType: mediaType, ArtifactType: m.ArtifactType}, annotations: m.Annotations}
	child := func(d v1.Hash) error {
		if !validDigest(d.String()) {
			return fmt.Errorf("a descriptor has digest %q", d)
		}
		p.Children = append(p.Children, d.String())
		return nil
	}
	if m.Config != nil {
		if err := child(m.Config.Digest); err != nil {
			return parsedManifest{}, nil, err
		}
		if p.ArtifactType == "" {
			p.ArtifactType = string(m.Config.MediaType)
		}
	}
	for _, d := range append(m.Layers, m.Manifests...) {
		if err := child(d.Digest); err != nil {
			return parsedManifest{}, nil, err
		}
	}
	if m.Subject == nil {
		return p, nil, nil
	}
	if !validDigest(m.Subject.Digest.String()) {
		return parsedManifest{}, nil, fmt.Errorf("the subject has digest %q", m.Subject.Digest)
	}
	p.Subject = m.Subject.Digest.String()
	return p, &m.Subject.Digest, nil
}

// validDigest reports whether s is a sha256 or sha512 digest in canonical
// form: the only strings that may become part of a key or a path.
func validDigest(s string) bool {
	alg, hex, _ := strings.Cut(s, ":")
	want := map[string]int{"sha256": 64, "sha512": 128}[alg]
	if want == 0 || len(hex) != want {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
