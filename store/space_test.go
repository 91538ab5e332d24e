package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Below the reserve nothing new is stored, but what is stored is served;
// below the floor no metadata is written either. A reserve larger than the
// disk stands in for a full disk here; test/ fills a real small one.
func TestLowDiskRefusesNewContentKeepsServing(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	sess, _ := s.Begin(KindFill, "x")
	d := writeBlob(t, sess, []byte("cached before the disk filled up"))
	m, _ := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json")
	sess.Tag("docker.io/acme/app", "1", m)
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, name := range ballastNames {
		if _, err := os.Stat(filepath.Join(root, name)); err != nil {
			t.Errorf("no ballast file: %v", err)
		}
	}

	free, err := freeBytes(root)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(root, Options{Reserve: 8 * free})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(filepath.Join(root, ballastNames[0])); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("running ballast kept below the floor: %v", err)
	}
	sess, _ = s.Begin(KindFill, "x")
	defer sess.Abort()
	if _, _, err := sess.Blob(digestOf([]byte("new")), 3); !errors.Is(err, ErrNoSpace) {
		t.Errorf("new blob below the reserve: %v", err)
	}
	if _, err := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json"); !errors.Is(err, ErrNoSpace) {
		t.Errorf("new manifest below the reserve: %v", err)
	}
	if err := s.ConfirmTag("docker.io/acme/app", "1", m, time.Now()); !errors.Is(err, ErrNoSpace) {
		t.Errorf("metadata below the floor: %v", err)
	}
	if _, _, full := s.Space(); !full {
		t.Error("Space does not report the disk full")
	}
	f, _, err := s.Blob(d)
	if err != nil {
		t.Fatalf("cached blob on a full disk: %v", err)
	}
	f.Close()
	if got, err := s.Manifest(m); err != nil || string(got.Bytes) != manifest {
		t.Fatalf("cached manifest on a full disk: %v", err)
	}
	if tag, err := s.Tag("docker.io/acme/app", "1"); err != nil || tag.Digest != m {
		t.Fatalf("cached tag on a full disk: %v", err)
	}
}
