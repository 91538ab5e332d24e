package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// A follower reads a write as it grows, but not its last byte until the
// digest has been checked.
func TestFollowerGetsLastByteOnlyAfterVerify(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	blob := randomBytes(t, 300_000)
	d := digestOf(blob)
	sess, _ := s.Begin(KindFill, "docker.io/acme/app")
	defer sess.Abort()
	w, _, err := sess.Blob(d, int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	p := s.Join(d)
	if p == nil || p.Origin() != "docker.io/acme/app" {
		t.Fatalf("Join = %v", p)
	}
	defer p.Release()
	r, err := p.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.Write(blob); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(blob))
	if _, err := io.ReadFull(r, got[:len(blob)-1]); err != nil {
		t.Fatal(err)
	}
	last := make(chan error, 1)
	go func() { _, err := io.ReadFull(r, got[len(blob)-1:]); last <- err }()
	select {
	case err := <-last:
		t.Fatalf("the last byte came before verification (%v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-last; err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("after verification: %v", err)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the end: %d %v", n, err)
	}
}

// A wrong blob fails its followers: none of them ever has it whole.
func TestFailedWriteFailsFollowers(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	right := randomBytes(t, 1000)
	d := digestOf(right)
	sess, _ := s.Begin(KindFill, "x")
	defer sess.Abort()
	w, _, _ := sess.Blob(d, 1000)
	p := s.Join(d)
	defer p.Release()
	r, _ := p.Follow()
	defer r.Close()
	wrong := append([]byte(nil), right...)
	wrong[500] ^= 1
	w.Write(wrong)
	if err := w.Close(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("close: %v", err)
	}
	b, err := io.ReadAll(r)
	if !errors.Is(err, ErrDigestMismatch) || len(b) == 1000 {
		t.Fatalf("follower: %d bytes, %v", len(b), err)
	}
	if err := p.Wait(context.Background()); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("wait: %v", err)
	}
	if s.Join(d) != nil {
		t.Fatal("a failed write is still registered")
	}
}

// A second session asking for content another one is writing follows that
// write instead of writing it again; once published, it is stored.
func TestOneWriterPerDigest(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	blob := randomBytes(t, 10_000)
	d := digestOf(blob)
	first, _ := s.Begin(KindFill, "docker.io/a")
	defer first.Abort()
	w, _, _ := first.Blob(d, -1)
	second, _ := s.Begin(KindSync, "job")
	defer second.Abort()
	w2, other, err := second.Blob(d, int64(len(blob)))
	if err != nil || w2 != nil || other == nil || other.Origin() != "docker.io/a" {
		t.Fatalf("second writer: %v %v %v", w2, other, err)
	}
	defer other.Release()
	if n, _ := w.Interest(); n != 1 {
		t.Errorf("interest = %d, want 1", n)
	}
	done := make(chan error, 1)
	go func() { done <- other.Wait(context.Background()) }()
	if err := w.SetSize(int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if size, err := other.Size(context.Background()); size != int64(len(blob)) || err != nil {
		t.Fatalf("size %d %v", size, err)
	}
	w.Write(blob)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Verified but not yet published: Open reads the part file.
	f, n, err := other.Open(context.Background())
	if err != nil || n != int64(len(blob)) {
		t.Fatalf("open verified part: %d %v", n, err)
	}
	f.Close()
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := second.Blob(d, int64(len(blob))); !errors.Is(err, ErrExists) {
		t.Fatalf("after commit: %v", err)
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// Followers send with sendfile when the destination can read from a file
// (a TCP connection), and get every byte as it is written.
func TestFollowerWriteToConnection(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	blob := randomBytes(t, 3<<20)
	d := digestOf(blob)
	sess, _ := s.Begin(KindFill, "x")
	defer sess.Abort()
	w, _, _ := sess.Blob(d, int64(len(blob)))
	p := w.Pending()
	defer p.Release()
	r, err := p.Follow()
	if err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- nil
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		received <- b
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for off := 0; off < len(blob); off += 256 << 10 {
			w.Write(blob[off:min(off+256<<10, len(blob))])
			time.Sleep(time.Millisecond)
		}
		w.Close()
	}()
	n, err := r.WriteTo(conn.(*net.TCPConn))
	conn.Close()
	r.Close()
	wg.Wait()
	if err != nil || n != int64(len(blob)) {
		t.Fatalf("WriteTo: %d %v", n, err)
	}
	if got := <-received; !bytes.Equal(got, blob) {
		t.Fatalf("received %d bytes, not the blob", len(got))
	}
}

// A sync session interrupted half-way is resumed after a restart: the part
// file continues from its length, and the blob verifies.
func TestResumeContinuesPartFile(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	blob := randomBytes(t, 200_000)
	d := digestOf(blob)
	sess, _ := s.Begin(KindSync, "edge-base")
	w, _, _ := sess.Blob(d, int64(len(blob)))
	w.Write(blob[:120_000])
	id := sess.ID()
	sess.Close() // interrupted: nothing published, the part stays
	s.Close()

	s = open(t, root)
	defer s.Close()
	sess, err := s.Resume(id)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Abort()
	w, _, err = sess.Blob(d, int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Written() != 120_000 {
		t.Fatalf("resumed at %d, want 120000", w.Written())
	}
	if _, err := w.ReadFrom(bytes.NewReader(blob[120_000:])); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sess.Link("docker.io/acme/app", d)
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	f, n, err := s.Blob(d)
	if err != nil || n != int64(len(blob)) {
		t.Fatalf("resumed blob: %d %v", n, err)
	}
	f.Close()
	if _, err := s.Resume("not-a-uuid"); err == nil {
		t.Error("resume of a bad id succeeded")
	}
	fill, _ := s.Begin(KindFill, "x")
	defer fill.Abort()
	if _, err := s.Resume(fill.ID()); err == nil {
		t.Error("a fill session was resumed")
	}
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// Publication and removal of the same content never interleave: whatever
// order they run in, no key is left without its file.
func TestRemoveAndCommitOfOneDigest(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	blob := randomBytes(t, 4096)
	d := digestOf(blob)
	for i := 0; i < 50; i++ {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			sess, _ := s.Begin(KindFill, "x")
			defer sess.Abort()
			w, other, err := sess.Blob(d, int64(len(blob)))
			if err != nil || other != nil {
				if other != nil {
					other.Release()
				}
				return
			}
			w.Write(blob)
			if w.Close() == nil {
				sess.Commit()
			}
		}()
		go func() {
			defer wg.Done()
			if err := s.Remove([]v1.Hash{d}); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		if err := s.CheckInvariants(); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if err := s.Remove([]v1.Hash{d}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Stats(); n != 0 || s.HasBlob(d) {
		t.Errorf("after remove: %d pieces, file %v", n, s.HasBlob(d))
	}
}

// A repository's manifest links what it references, so that its blobs may
// be served under its name; manifests read back share one buffer.
func TestManifestLinksChildrenAndIsShared(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sess, _ := s.Begin(KindFill, "x")
	m, err := sess.Manifest("docker.io/acme/app", []byte(manifest), "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Commit(); err != nil {
		t.Fatal(err)
	}
	config, _ := v1.NewHash("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
	if !s.Linked("docker.io/acme/app", config) || s.Linked("docker.io/acme/other", config) {
		t.Error("the config is not linked to the manifest's repository only")
	}
	a, _ := s.Manifest(m)
	b, _ := s.Manifest(m)
	if &a.Bytes[0] != &b.Bytes[0] || string(a.Bytes) != manifest {
		t.Error("two reads of a manifest do not share one buffer")
	}
	if err := s.Remove([]v1.Hash{m}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Manifest(m); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed manifest still served: %v", err)
	}
}

// Asking a session for a blob it is writing while another goroutine closes
// that writer is refused, never a deadlock (Blob holds the session's lock,
// Close the writer's, then the session's).
func TestBlobWhileItsWriterCloses(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	for i := range 200 {
		blob := randomBytes(t, 1000+i)
		d := digestOf(blob)
		sess, _ := s.Begin(KindSync, "job")
		w, _, err := sess.Blob(d, int64(len(blob)))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(blob)
		closed := make(chan error, 1)
		go func() { closed <- w.Close() }()
		again := make(chan error, 1)
		go func() {
			_, _, err := sess.Blob(d, int64(len(blob)))
			again <- err
		}()
		for _, ch := range []chan error{closed, again} {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: deadlock between Blob and Close", i)
			}
		}
		sess.Abort()
	}
}
