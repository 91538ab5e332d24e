package mirror

import (
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// FuzzCheckManifest: whatever upstream sends, CheckManifest either refuses
// it or names a supported type that the document itself does not
// contradict, and the document parses as that kind of manifest.
func FuzzCheckManifest(f *testing.F) {
	for _, seed := range []struct{ body, ct string }{
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}`, "application/vnd.oci.image.manifest.v1+json"},
		{`{"schemaVersion":2,"manifests":[]}`, "application/json"},
		{`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`, ""},
		{`<html>login</html>`, "text/html"},
		{`{"schemaVersion":1,"fsLayers":[]}`, "application/vnd.docker.distribution.manifest.v1+prettyjws"},
		{`{"schemaVersion":2}`, "application/json"},
		{`{"schemaVersion":2,"config":null}`, ""},
	} {
		f.Add([]byte(seed.body), seed.ct)
	}
	f.Fuzz(func(t *testing.T, b []byte, ct string) {
		mt, err := CheckManifest(b, ct)
		if err != nil {
			return
		}
		if !isManifestType(mt) {
			t.Fatalf("accepted unsupported type %q", mt)
		}
		var doc struct {
			SchemaVersion int    `json:"schemaVersion"`
			MediaType     string `json:"mediaType"`
		}
		if json.Unmarshal(b, &doc) != nil || doc.SchemaVersion != 2 || (doc.MediaType != "" && doc.MediaType != mt) {
			t.Fatalf("accepted %q as %s", b, mt)
		}
		if types.MediaType(mt).IsIndex() != (mt == string(types.OCIImageIndex) || mt == string(types.DockerManifestList)) {
			t.Fatal("index types disagree")
		}
	})
}
