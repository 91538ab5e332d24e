package store

import (
	"bytes"
	"encoding/json"
	"io"

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
	if m.Config != nil {
		p.Children = append(p.Children, m.Config.Digest.String())
		if p.ArtifactType == "" {
			p.ArtifactType = string(m.Config.MediaType)
		}
	}
	for _, d := range append(m.Layers, m.Manifests...) {
		p.Children = append(p.Children, d.Digest.String())
	}
	if m.Subject == nil {
		return p, nil, nil
	}
	p.Subject = m.Subject.Digest.String()
	return p, &m.Subject.Digest, nil
}
