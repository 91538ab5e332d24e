package store

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Images groups the store by image: an index with its children and their
// blobs, a referrer with its subject, a loose blob alone; bytes held by
// one image only versus shared; tags, pins, what is missing.
func TestImages(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sess, _ := s.Begin(KindSync, "test")
	shared := writeBlob(t, sess, []byte("a layer two images share"))
	image := func(cfg, layer string) (string, int) {
		c := writeBlob(t, sess, []byte(cfg))
		l := writeBlob(t, sess, []byte(layer))
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":"%s"},"layers":[`+
			`{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":%d,"digest":"%s"},`+
			`{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":24,"digest":"%s"}]}`, len(cfg), c, len(layer), l, shared)
		d, err := sess.Manifest("docker.io/acme/app", []byte(m), "application/vnd.oci.image.manifest.v1+json")
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":%d,"digest":"%s"}`, len(m), d), len(m) + len(cfg) + len(layer)
	}
	amd, amdSize := image("amd64 config", "amd64 layer")
	arm, armSize := image("arm64 config", "arm64 layer, longer")
	missing := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":10,"digest":"sha256:` + fmt.Sprintf("%064x", 7) + `"}`
	idx := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + amd + `,` + arm + `,` + missing + `]}`
	indexDigest, err := sess.Manifest("docker.io/acme/app", []byte(idx), "application/vnd.oci.image.index.v1+json")
	if err != nil {
		t.Fatal(err)
	}
	sig := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[],` +
		`"subject":{"mediaType":"application/vnd.oci.image.index.v1+json","size":1,"digest":"` + indexDigest.String() + `"}}`
	sigDigest, err := sess.Manifest("docker.io/acme/app", []byte(sig), "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		t.Fatal(err)
	}
	other, otherSize := image("other config", "other layer")
	_ = other
	amdDigest := amd[strings.Index(amd, `"digest":"`)+10 : len(amd)-2]
	amdHash, _ := v1.NewHash(amdDigest)
	sess.Tag("docker.io/acme/app-amd64", "v1", amdHash) // a child with a tag of its own
	sess.Pin("mirror:amd", "docker.io/acme/app-amd64", "v1", amdHash)
	sess.Tag("docker.io/acme/app", "v1", indexDigest)
	sess.Tag("docker.io/acme/app", "latest", indexDigest)
	sess.Pin("mirror:edge", "docker.io/acme/app", "v1", indexDigest)
	loose := writeBlob(t, sess, []byte("pulled by digest only"))
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Touch(loose)

	images, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	byDigest := map[string]Image{}
	for _, img := range images {
		byDigest[img.Digest.String()] = img
	}
	if len(images) != 3 {
		t.Fatalf("%d images, want the index, the other manifest and the loose blob: %+v", len(images), images)
	}
	ix := byDigest[indexDigest.String()]
	wantSize := int64(len(idx) + len(sig) + amdSize + armSize)
	// Missing: the child left out, and the signature's empty config.
	if ix.Size != wantSize || ix.Shared != 24 || ix.Missing != 2 || ix.Items != 9 {
		t.Errorf("index: size %d shared %d missing %d items %d, want %d, 24, 2, 9", ix.Size, ix.Shared, ix.Missing, ix.Items, wantSize)
	}
	if !slices.Equal(ix.Tags, []string{"docker.io/acme/app-amd64:v1", "docker.io/acme/app:latest", "docker.io/acme/app:v1"}) ||
		!slices.Equal(ix.PinnedBy, []string{"mirror:amd", "mirror:edge"}) ||
		ix.Stored.IsZero() || ix.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("index: %+v", ix)
	}
	if _, listed := byDigest[sigDigest.String()]; listed {
		t.Error("the signature is listed on its own, not with its subject")
	}
	lb := byDigest[loose.String()]
	if lb.MediaType != "" || lb.Size != int64(len("pulled by digest only")) || lb.Accessed.IsZero() || lb.Items != 1 {
		t.Errorf("loose blob: %+v", lb)
	}
	for _, img := range images {
		if img.Digest != indexDigest && img.Digest != loose && (img.Size != int64(otherSize) || img.Shared != 24 || len(img.Tags) != 0) {
			t.Errorf("other image: %+v, want size %d", img, otherSize)
		}
	}
}

// A manifest first fetched as a blob (GET /blobs/ of its digest) has both
// keys; it is one image, not two that share everything.
func TestImagesManifestAlsoBlob(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sess, _ := s.Begin(KindFill, "test")
	writeBlob(t, sess, []byte(manifest))
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	sess, _ = s.Begin(KindFill, "test")
	if _, err := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json"); err != nil {
		t.Fatal(err)
	}
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	images, err := s.Images()
	if err != nil || len(images) != 1 || images[0].Size != int64(len(manifest)) || images[0].Shared != 0 {
		t.Fatalf("%+v %v", images, err)
	}
}
