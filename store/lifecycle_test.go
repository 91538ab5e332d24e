package store

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// A session that ends with writers still open ends them: no hashing
// goroutine, no descriptor and no promised space is left behind.
func TestEndedSessionsReleaseTheirWriters(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		sess, _ := s.Begin(KindSync, "x")
		w, _, err := sess.Blob(digestOf(randomBytes(t, 64)), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte{1})
		if i%2 == 0 {
			sess.Abort()
		} else {
			sess.Close()
		}
		if _, err := w.Write([]byte{2}); err == nil {
			t.Fatal("a writer of an ended session still writes")
		}
		if err := w.Close(); err == nil {
			t.Fatal("a writer of an ended session still stages")
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Errorf("%d goroutines left behind", n-before)
	}
	if p := s.space.promised.Load(); p != 0 {
		t.Errorf("%d bytes still promised", p)
	}
}

// Writers and the end of their session may race; nothing deadlocks, and
// nothing is registered after the session ended.
func TestBlobAndAbortConcurrently(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			sess, _ := s.Begin(KindFill, "x")
			var wg sync.WaitGroup
			wg.Add(2)
			d := digestOf(randomBytes(t, 32))
			go func() {
				defer wg.Done()
				if w, _, err := sess.Blob(d, 32); err == nil {
					w.Write(make([]byte, 32))
					w.Close()
				}
			}()
			go func() { defer wg.Done(); sess.Abort() }()
			wg.Wait()
			if p := s.Join(d); p != nil {
				t.Error("a write of an aborted session is still registered")
				p.Release()
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("deadlock between Blob and Abort")
	}
}

// A commit whose transaction cannot be written takes back the files it
// put in place, so no file is left without its key and the next session
// can store the content.
func TestFailedCommitTakesBackItsFiles(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	blob := randomBytes(t, 1000)
	sess, _ := s.Begin(KindFill, "x")
	d := writeBlob(t, sess, blob)
	sess.Tag("docker.io/acme/app", "1", digestOf([]byte("no such manifest")))
	if err := sess.Commit(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("commit: %v", err)
	}
	if s.HasBlob(d) {
		t.Fatal("the blob of a failed commit is in place")
	}
	again, _ := s.Begin(KindFill, "x")
	defer again.Abort()
	writeBlob(t, again, blob)
	if err := again.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// A session cannot be resumed twice at once, nor written after it ended.
func TestSessionsOpenOnce(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sess, _ := s.Begin(KindSync, "x")
	if _, err := s.Resume(sess.ID()); err == nil {
		t.Error("a session open in this process was resumed")
	}
	sess.Close()
	again, err := s.Resume(sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Abort()
	if _, _, err := sess.Blob(digestOf([]byte("x")), 1); !errors.Is(err, ErrSessionDone) {
		t.Errorf("Blob on a closed session: %v", err)
	}
}

// After the disk was so full that cached files had to go, the next Open
// drops their keys and the tags of their manifests: the invariants hold.
func TestRepairAfterEmergencyRemoval(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	sess, _ := s.Begin(KindFill, "x")
	d := writeBlob(t, sess, randomBytes(t, 5000))
	m, _ := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json")
	sess.Tag("docker.io/acme/app", "1", m)
	kept := writeBlob(t, sess, randomBytes(t, 10))
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, gone := range []v1.Hash{d, m} {
		os.Remove(filepath.Join(root, "blobs", gone.Algorithm, gone.Hex[:2], gone.Hex))
	}
	os.WriteFile(filepath.Join(root, repairMarker), nil, 0o640)
	s = open(t, root)
	defer s.Close()
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tag("docker.io/acme/app", "1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the tag of a removed manifest: %v", err)
	}
	if !s.HasBlob(kept) {
		t.Error("a blob that was not removed is gone")
	}
	if _, err := os.Stat(filepath.Join(root, repairMarker)); !errors.Is(err, os.ErrNotExist) {
		t.Error("the repair marker stays")
	}
}
