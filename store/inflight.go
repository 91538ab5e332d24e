package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The store coordinates writers: at most one writer per digest at a time,
// whichever session it belongs to (a pull-through fill, a mirror sync, an
// import, an upload). Anyone else who wants that content follows the writer
// instead of fetching it again: a Pending is a handle on a write in
// progress, and a Follower reads the content as it is written, holding the
// last byte back until the digest has been checked, so that nobody ever
// receives a complete wrong blob.

// ErrExists is returned by Session.Blob when the content is already stored.
var ErrExists = errors.New("already stored")

// ErrAborted is what followers see when a write is given up without a
// reason of its own (its session was aborted).
var ErrAborted = errors.New("the write was abandoned")

// inflight is the shared state of one write.
type inflight struct {
	digest v1.Hash
	origin string   // what the writing session is for, e.g. the repository of a fill
	owner  *Session // the writing session

	mu       sync.Mutex
	cond     sync.Cond
	path     string // the part file; the blob file once published
	size     int64  // total size, -1 until known
	sized    bool   // size is known (or known to be unknown: the writer began)
	written  int64
	verified bool  // the digest check passed: the last byte may go out
	done     bool  // the writer finished: verified and closed, or failed
	err      error // why it failed
	interest int   // Pending handles and followers attached
	idle     time.Time
}

func newInflight(d v1.Hash, ss *Session, path string, size int64) *inflight {
	in := &inflight{digest: d, origin: ss.origin, owner: ss, path: path, size: size, sized: size >= 0, idle: time.Now()}
	in.cond.L = &in.mu
	return in
}

func (in *inflight) attach() {
	in.mu.Lock()
	in.interest++
	in.mu.Unlock()
}

func (in *inflight) detach() {
	in.mu.Lock()
	if in.interest--; in.interest == 0 {
		in.idle = time.Now()
	}
	in.mu.Unlock()
}

// fail ends the write with err, waking everyone. The first reason wins.
func (in *inflight) fail(err error) {
	in.mu.Lock()
	if !in.done {
		in.done, in.err = true, err
		in.sized = true
	}
	in.cond.Broadcast()
	in.mu.Unlock()
}

// waitFor blocks until cond holds or ctx ends; it returns in.err once the
// write failed.
func (in *inflight) waitFor(ctx context.Context, cond func() bool) error {
	stop := context.AfterFunc(ctx, func() {
		in.mu.Lock()
		in.cond.Broadcast()
		in.mu.Unlock()
	})
	defer stop()
	in.mu.Lock()
	defer in.mu.Unlock()
	for {
		switch {
		case in.err != nil:
			return in.err
		case cond():
			return nil
		case ctx.Err() != nil:
			return context.Cause(ctx)
		}
		in.cond.Wait()
	}
}

// Pending is one party's handle on a write in progress. It counts as
// interest in the write until Release.
type Pending struct {
	in       *inflight
	released sync.Once
}

// Join returns a handle on the write of d in progress, or nil if nobody is
// writing d.
func (s *Store) Join(d v1.Hash) *Pending {
	s.writingMu.Lock()
	in := s.writing[d.String()]
	s.writingMu.Unlock()
	if in == nil {
		return nil
	}
	in.mu.Lock()
	failed := in.err != nil
	if !failed {
		in.interest++
	}
	in.mu.Unlock()
	if failed { // on its way out of the registry
		return nil
	}
	return &Pending{in: in}
}

// Release lets go of the handle.
func (p *Pending) Release() { p.released.Do(p.in.detach) }

// Origin says what the write is for (the origin its session was begun with).
func (p *Pending) Origin() string { return p.in.origin }

// Size waits until the writer knows the total size (-1: it will not know
// before the end) or fails.
func (p *Pending) Size(ctx context.Context) (int64, error) {
	in := p.in
	if err := in.waitFor(ctx, func() bool { return in.sized }); err != nil {
		return 0, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.size, nil
}

// Wait blocks until the content is complete and verified, or the write failed.
func (p *Pending) Wait(ctx context.Context) error {
	return p.in.waitFor(ctx, func() bool { return p.in.verified })
}

// Open waits for the verified content and opens it for reading: the part
// file while its session has not published it, the blob file after.
func (p *Pending) Open(ctx context.Context) (*os.File, int64, error) {
	if err := p.Wait(ctx); err != nil {
		return nil, 0, err
	}
	in := p.in
	in.mu.Lock()
	defer in.mu.Unlock()
	f, err := os.Open(in.path)
	if err != nil {
		return nil, 0, fmt.Errorf("store: %w", err)
	}
	return f, in.written, nil
}

// Follow returns a reader of the content from its first byte, following
// the write as it grows. It has its own file descriptor (so it can be sent
// with sendfile) and its own interest in the write, until Close.
func (p *Pending) Follow() (*Follower, error) { return p.FollowFrom(0) }

// FollowFrom is Follow starting at byte off (a client resuming with
// Range: bytes=off-): it still gets the last byte only once verified.
func (p *Pending) FollowFrom(off int64) (*Follower, error) {
	in := p.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.err != nil {
		return nil, in.err
	}
	f, err := os.Open(in.path)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	in.interest++
	return &Follower{in: in, f: f, off: off, start: off}, nil
}

// Follower reads a write in progress. Read returns the write's error if it
// fails; the last byte comes only once the content is verified.
type Follower struct {
	in     *inflight
	f      *os.File
	off    int64
	start  int64
	closed bool
}

// followerIdle is how long a follower waits for the write to advance
// before giving up: the download itself has an idle timeout and resumes,
// so a write that stays still this long is not coming back, and a client
// that left must not hold its file and its interest for ever.
const followerIdle = 10 * time.Minute

// errStalled is what a follower returns when the write stood still too long.
var errStalled = errors.New("the write has not advanced for too long")

// available waits until bytes beyond off may be read, and returns up to
// where; at the end it returns off with io.EOF.
func (r *Follower) available() (int64, error) {
	in := r.in
	in.mu.Lock()
	defer in.mu.Unlock()
	var timer *time.Timer
	stalled := false
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if in.err != nil {
			return 0, in.err
		}
		limit := in.written
		if !in.verified { // the last byte waits for the digest check
			if in.size < 0 {
				limit--
			} else if limit >= in.size {
				limit = in.size - 1
			}
		}
		if limit > r.off {
			return limit, nil
		}
		if in.verified && r.off >= in.written {
			return r.off, io.EOF
		}
		if stalled {
			return 0, errStalled
		}
		if timer == nil {
			timer = time.AfterFunc(followerIdle, func() {
				in.mu.Lock()
				stalled = true
				in.cond.Broadcast()
				in.mu.Unlock()
			})
		}
		in.cond.Wait()
	}
}

func (r *Follower) Read(p []byte) (int, error) {
	limit, err := r.available()
	if err != nil {
		return 0, err
	}
	if int64(len(p)) > limit-r.off {
		p = p[:limit-r.off]
	}
	n, err := r.f.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// WriteTo sends the content to w as it arrives (do not mix it with Read). When w can read from a
// file itself (a TCP connection behind fasthttp's buffered writer), each
// stretch goes out with sendfile, without copying it through user space.
func (r *Follower) WriteTo(w io.Writer) (int64, error) {
	rf, ok := w.(io.ReaderFrom)
	if !ok {
		return io.CopyBuffer(w, onlyReader{r}, make([]byte, 64<<10))
	}
	var sent int64
	for {
		limit, err := r.available()
		if err == io.EOF {
			return sent, nil
		}
		if err != nil {
			return sent, err
		}
		// The descriptor's offset is r.off: it was opened at 0 and only
		// ReadFrom moves it.
		n, err := rf.ReadFrom(&io.LimitedReader{R: r.f, N: limit - r.off})
		r.off += n
		sent += n
		if err != nil {
			return sent, err
		}
		if n == 0 {
			return sent, io.ErrNoProgress
		}
	}
}

// Sent is how many bytes the follower has delivered.
func (r *Follower) Sent() int64 { return r.off - r.start }

// Close releases the file and the follower's interest in the write.
func (r *Follower) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.in.detach()
	return r.f.Close()
}

type onlyReader struct{ io.Reader }
