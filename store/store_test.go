package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func open(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func digestOf(b []byte) v1.Hash {
	d, _, _ := v1.SHA256(bytes.NewReader(b))
	return d
}

func writeBlob(t *testing.T, sess *Session, b []byte) v1.Hash {
	t.Helper()
	d := digestOf(b)
	w, _, err := sess.Blob(d, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return d
}

const manifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
	`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}`

func TestCommitPublishesAbortLeavesNothing(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	defer s.Close()

	sess, _ := s.Begin(KindFill, "test")
	d := writeBlob(t, sess, []byte("hello"))
	m, err := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		t.Fatal(err)
	}
	sess.Tag("docker.io/acme/app", "1", m)
	sess.Link("docker.io/acme/app", d)
	if _, _, err := s.Blob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("blob visible before commit: %v", err)
	}
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	sess.Abort() // no-op after commit
	f, size, err := s.Blob(d)
	if err != nil || size != 5 {
		t.Fatalf("blob after commit: %v size %d", err, size)
	}
	f.Close()
	tag, err := s.Tag("docker.io/acme/app", "1")
	if err != nil || tag.Digest != m {
		t.Fatalf("tag: %v %v", tag, err)
	}
	if repos, _ := s.Repositories(); len(repos) != 1 || repos[0] != "docker.io/acme/app" {
		t.Errorf("repositories = %v", repos)
	}

	aborted, _ := s.Begin(KindFill, "test")
	other := writeBlob(t, aborted, []byte("never published"))
	aborted.Abort()
	if _, _, err := s.Blob(other); !errors.Is(err, ErrNotFound) {
		t.Errorf("aborted blob visible: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, syncDir)); len(entries) != 0 {
		t.Errorf("sessions left: %v", entries)
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func TestWrongDigestOrSizeIsRefused(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sess, _ := s.Begin(KindFill, "test")
	defer sess.Abort()

	w, _, _ := sess.Blob(digestOf([]byte("right")), 5)
	w.Write([]byte("wrong"))
	if err := w.Close(); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("wrong bytes: %v", err)
	}
	w, _, _ = sess.Blob(digestOf([]byte("right")), 4)
	if _, err := w.Write([]byte("right")); !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("too long: %v", err)
	}
	w.Discard(nil)
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// A tag can only point at a manifest that exists.
func TestTagNeedsManifest(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sess, _ := s.Begin(KindFill, "test")
	defer sess.Abort()
	sess.Tag("docker.io/acme/app", "1", digestOf([]byte("no such manifest")))
	if err := sess.Commit(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("commit of a dangling tag: %v", err)
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// Crash points: a staged part file, a renamed file whose transaction never
// ran. Open cleans both; resumable sessions of other kinds stay.
func TestOpenCleansCrashLeftovers(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	fill, _ := s.Begin(KindFill, "test")
	writeBlob(t, fill, []byte("staged, never committed"))
	keep, _ := s.Begin(KindSync, "test")
	writeBlob(t, keep, []byte("a mirror job's part file"))
	s.Close()

	// A file renamed into blobs/ just before a crash, its metadata lost.
	orphan := []byte("renamed but no key")
	d := digestOf(orphan)
	path := filepath.Join(root, "blobs", "sha256", d.Hex[:2], d.Hex)
	os.MkdirAll(filepath.Dir(path), 0o750)
	os.WriteFile(path, orphan, 0o640)

	s = open(t, root)
	defer s.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Error("orphan blob file survived Open")
	}
	if _, err := os.Stat(fill.dir); !errors.Is(err, os.ErrNotExist) {
		t.Error("fill session survived Open")
	}
	if _, err := os.Stat(keep.dir); err != nil {
		t.Error("sync session was removed; it should stay for resume")
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func TestReferrersIndexed(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	subject := digestOf([]byte("subject"))
	sig := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[],` +
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":7,"digest":"` + subject.String() + `"}}`
	sess, _ := s.Begin(KindFill, "test")
	d, err := sess.Manifest("docker.io/acme/app", []byte(sig), "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	refs, err := s.Referrers("docker.io/acme/app", subject)
	if err != nil || len(refs) != 1 || refs[0].Digest != d || refs[0].ArtifactType != "application/vnd.dev.cosign.artifact.sig.v1+json" {
		t.Fatalf("referrers = %+v, %v", refs, err)
	}
}

func TestAccessTimesFlushed(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	sess, _ := s.Begin(KindFill, "test")
	d := writeBlob(t, sess, []byte("x"))
	sess.Commit()
	f, _, _ := s.Blob(d)
	f.Close()
	s.Close()
	s = open(t, root)
	defer s.Close()
	if at, err := s.LastAccess(d); err != nil || at.IsZero() {
		t.Fatalf("last access after reopen: %v %v", at, err)
	}
}

// Concurrent sessions writing the same manifest (two tags of one image, or
// a tag and a digest) and confirmations of its tag all succeed: a lost
// transaction conflict is retried, not reported.
func TestConcurrentCommitsOfOneManifest(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				sess, err := s.Begin(KindFill, "test")
				if err != nil {
					errs <- err
					return
				}
				d, err := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json")
				if err == nil {
					sess.Tag("docker.io/acme/app", fmt.Sprintf("t%d", g), d)
					err = sess.Commit()
				}
				if err == nil {
					err = s.ConfirmTag("docker.io/acme/app", "t0", d, time.Now())
				}
				if err != nil && !errors.Is(err, ErrNotFound) { // t0 may not exist yet
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n, _ := s.Stats(); n != 1 {
		t.Errorf("store counts %d pieces of content, want 1", n)
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
