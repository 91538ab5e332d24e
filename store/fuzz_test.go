package store

import "testing"

// FuzzParseManifest: the store's manifest indexing never panics, and what
// it records are digests, not arbitrary strings that could end up in keys.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(manifest), "application/vnd.oci.image.manifest.v1+json")
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"mediaType":"x"}]}`), "application/vnd.oci.image.index.v1+json")
	f.Add([]byte(`{"subject":{"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}}`), "")
	f.Add([]byte(`{"layers":[{"digest":"not a digest"}]}`), "")
	f.Add([]byte(`null`), "")
	f.Fuzz(func(t *testing.T, b []byte, mt string) {
		p, subject, err := parseManifest(b, mt)
		if err != nil {
			return
		}
		for _, c := range p.Children {
			if !validDigest(c) {
				t.Fatalf("child %q is not a digest", c)
			}
		}
		if subject != nil && !validDigest(subject.String()) {
			t.Fatalf("subject %q is not a digest", subject)
		}
	})
}
