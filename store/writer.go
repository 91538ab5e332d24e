package store

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BlobWriter writes one blob into a session. It hashes what it writes; Close
// checks digest and size and fsyncs, and only then does the blob count.
// Followers (see Pending) read what it has written as it goes. One goroutine
// writes; the session may end it from another (Abort, Commit), so its state
// is under mu. Lock order: mu, then the session's mu (stage), then the
// write's inflight mu; never the other way round.
type BlobWriter struct {
	ss   *Session
	in   *inflight
	path string
	want v1.Hash

	mu        sync.Mutex
	f         *os.File
	h         *asyncHash
	size      int64
	n         int64
	checked   int64 // n at the last free-space check
	promised  int64 // bytes counted in the store's promised space
	finished  bool
	finishErr error
	// hasFailed mirrors finished && finishErr != nil for readers that hold
	// the session's mu, which must not take mu (the lock order above).
	hasFailed atomic.Bool
}

// Blob starts writing content d of the given size (-1 if not yet known)
// into the session. If another session is writing d, it returns a handle
// on that write to follow instead (w is nil; Release the handle). If d is
// stored, it returns ErrExists. In a resumed session, a part file left by
// the interruption is continued: Written says from where.
func (ss *Session) Blob(d v1.Hash, size int64) (w *BlobWriter, other *Pending, err error) {
	h, err := hasher(d)
	if err != nil {
		return nil, nil, err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.done {
		return nil, nil, ErrSessionDone
	}
	if w := ss.writers[d.String()]; w != nil && !w.failed() {
		return nil, nil, fmt.Errorf("store: %s is already being written in this session", d)
	}
	s := ss.s
	path := filepath.Join(ss.dir, d.Algorithm+"-"+d.Hex+".part")
	s.writingMu.Lock()
	if in := s.writing[d.String()]; in != nil {
		in.mu.Lock()
		failed := in.err != nil
		if !failed {
			in.interest++
		}
		in.mu.Unlock()
		if !failed {
			s.writingMu.Unlock()
			return nil, &Pending{in: in}, nil
		}
		delete(s.writing, d.String()) // a failed write on its way out: this one takes over
	}
	if s.HasBlob(d) {
		s.writingMu.Unlock()
		return nil, nil, ErrExists
	}
	if err := s.admit(max(size, 0)); err != nil {
		s.writingMu.Unlock()
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		s.writingMu.Unlock()
		return nil, nil, fmt.Errorf("store: %w", err)
	}
	in := newInflight(d, ss, path, size)
	s.writing[d.String()] = in
	s.writingMu.Unlock()

	// A resumed part is hashed again outside the registry's lock: it may be
	// gigabytes, and every blob request looks there.
	n, err := resumePart(f, h, size)
	if err != nil {
		f.Close()
		in.fail(fmt.Errorf("store: %w", err))
		ss.s.unregister(d.String(), in)
		return nil, nil, fmt.Errorf("store: %w", err)
	}
	in.mu.Lock()
	in.written = n
	in.mu.Unlock()
	w = &BlobWriter{ss: ss, in: in, f: f, path: path, h: newAsyncHash(h), want: d, size: size, n: n, checked: n}
	ss.writers[d.String()] = w
	w.promise()
	return w, nil, nil
}

// resumePart feeds what a part file already holds (a resumed write) to h
// and leaves f at its end. A part longer than size starts over.
func resumePart(f *os.File, h hash.Hash, size int64) (int64, error) {
	n, err := io.Copy(h, f)
	if err == nil && size >= 0 && n > size {
		h.Reset()
		n, err = 0, f.Truncate(0)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
	}
	return n, err
}

func hasher(d v1.Hash) (hash.Hash, error) {
	switch d.Algorithm {
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("store: unsupported digest algorithm %q", d.Algorithm)
}

// promise counts what is left to write against the free space, so that
// writes starting meanwhile leave room for it. Under mu.
func (w *BlobWriter) promise() {
	left := int64(0)
	if w.size > w.n && !w.finished {
		left = w.size - w.n
	}
	w.ss.s.space.promised.Add(left - w.promised)
	w.promised = left
}

// SetSize announces the total size once the writer learns it (from
// upstream's response), for followers and for the free-space check.
func (w *BlobWriter) SetSize(size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return w.finishedErr()
	}
	if w.size >= 0 && size != w.size {
		return fmt.Errorf("%w: %s is %d bytes, not %d", ErrSizeMismatch, w.want, w.size, size)
	}
	if size >= 0 && w.n > size {
		return fmt.Errorf("%w: %s: %d bytes written, more than %d", ErrSizeMismatch, w.want, w.n, size)
	}
	if size >= 0 && w.size < 0 {
		if err := w.ss.s.admit(size - w.n); err != nil {
			return err
		}
	}
	w.size = size
	w.promise()
	w.in.mu.Lock()
	w.in.size, w.in.sized = size, true
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
	return nil
}

// Written is how many bytes have been written so far (for a resumed part,
// including those written before the interruption).
func (w *BlobWriter) Written() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// Interest reports how many parties follow or wait for this write, and
// since when nobody has, if nobody does.
func (w *BlobWriter) Interest() (n int, idleSince time.Time) {
	w.in.mu.Lock()
	defer w.in.mu.Unlock()
	return w.in.interest, w.in.idle
}

// Progress reports how much has been written of how much (-1: unknown).
// Unlike Written, it does not wait for a write in progress.
func (w *BlobWriter) Progress() (written, size int64) {
	w.in.mu.Lock()
	defer w.in.mu.Unlock()
	return w.in.written, w.in.size
}

// Pending returns a handle on this write, for the writer's own clients.
func (w *BlobWriter) Pending() *Pending {
	w.in.attach()
	return &Pending{in: w.in}
}

func (w *BlobWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.write(p); err != nil {
		return 0, err
	}
	w.h.Write(p)
	w.advance(len(p))
	return len(p), nil
}

// ReadFrom copies r into the blob, handing each buffer to the hasher
// instead of copying it again.
func (w *BlobWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		buf := getBuffer()
		n, rerr := r.Read(*buf) // what has arrived goes to followers at once
		if n > 0 {
			w.mu.Lock()
			if err := w.write((*buf)[:n]); err != nil {
				w.mu.Unlock()
				putBuffer(buf)
				return total, err
			}
			*buf = (*buf)[:n]
			w.h.give(buf)
			w.advance(n)
			w.mu.Unlock()
			total += int64(n)
		} else {
			putBuffer(buf)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// write puts p in the part file, checking the size and, every few MiB,
// the free space. Under mu.
func (w *BlobWriter) write(p []byte) error {
	if w.finished {
		return w.finishedErr()
	}
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrSizeMismatch, w.want, w.size)
	}
	if w.n-w.checked >= spaceCheckEvery {
		w.checked = w.n
		s := w.ss.s
		if free := s.measure(); free < s.space.reserve {
			return fmt.Errorf("%w: %d bytes free in %s, keeping %d for metadata", ErrNoSpace, free, s.root, s.space.reserve)
		}
	}
	if _, err := w.f.Write(p); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// advance publishes n more written bytes to followers. Under mu.
func (w *BlobWriter) advance(n int) {
	w.n += int64(n)
	if w.promised > 0 {
		k := min(int64(n), w.promised)
		w.promised -= k
		w.ss.s.space.promised.Add(-k)
	}
	w.in.mu.Lock()
	w.in.written = w.n
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
}

// Close verifies the blob, releases the last byte to followers, fsyncs it
// and hands it to the session for Commit. On any error the part file is
// removed, followers fail, and nothing is staged.
func (w *BlobWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return w.finishedErr()
	}
	err := w.verify()
	if err == nil {
		w.in.mu.Lock()
		w.in.verified = true // followers get their last byte now, not after the fsync
		w.in.cond.Broadcast()
		w.in.mu.Unlock()
		err = w.f.Sync()
	}
	err = errors.Join(err, w.f.Close())
	if err == nil {
		err = w.ss.stage(w.want, w.path, blobMeta{Size: w.n})
	}
	if err != nil {
		w.fail(err, true)
		return err
	}
	w.finished = true
	w.promise()
	w.in.mu.Lock()
	w.in.done = true
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
	return nil
}

// Discard drops a blob that cannot or need not be finished; followers get
// err (ErrAborted if nil).
func (w *BlobWriter) Discard(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return
	}
	if err == nil {
		err = ErrAborted
	}
	w.h.Sum() // stops the hashing goroutine
	w.f.Close()
	w.fail(err, true)
}

// abandon ends a writer its session is ending under it: the hasher stops,
// the file closes, the space promised is given back, followers fail. The
// part file stays if keep is set (a session closed for a later Resume).
func (w *BlobWriter) abandon(err error, keep bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return
	}
	w.h.Sum()
	w.f.Close()
	w.fail(err, !keep)
}

// fail ends the write with err. Under mu.
func (w *BlobWriter) fail(err error, remove bool) {
	w.finished, w.finishErr = true, err
	w.hasFailed.Store(err != nil)
	w.promise()
	w.in.fail(err) // before the file goes: a follower joining now gets err, not ENOENT
	w.ss.s.unregister(w.want.String(), w.in)
	if remove {
		os.Remove(w.path)
	}
}

func (w *BlobWriter) failed() bool { return w.hasFailed.Load() }

func (w *BlobWriter) finishedErr() error {
	if w.finishErr != nil {
		return w.finishErr
	}
	return ErrSessionDone
}

func (w *BlobWriter) verify() error {
	if w.size >= 0 && w.n != w.size {
		w.h.Sum()
		return fmt.Errorf("%w: %s: got %d bytes, want %d", ErrSizeMismatch, w.want, w.n, w.size)
	}
	got := fmt.Sprintf("%x", w.h.Sum())
	if got != w.want.Hex {
		return fmt.Errorf("%w: want %s, content hashes to %s:%s", ErrDigestMismatch, w.want, w.want.Algorithm, got)
	}
	return nil
}
