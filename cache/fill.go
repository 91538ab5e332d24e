package cache

import (
	"context"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
	"github.com/valyala/fasthttp"
)

const (
	fillChunk         = 256 << 10
	fillResumes       = 5                // how often a broken upstream body is resumed with Range
	fillHeaderTimeout = 20 * time.Second // for upstream's response headers, retries included
)

// fill is one upstream download of a blob, shared by every client that asks
// for it meanwhile. The downloader writes into the store session's part
// file; clients tail that file. The last byte is held back until the digest
// check passes, so no client ever receives a complete wrong blob.
type fill struct {
	digest v1.Hash
	ready  chan struct{} // closed once size and file are known, or err is set

	mu       sync.Mutex
	cond     *sync.Cond
	size     int64    // total size, -1 if upstream did not say
	written  int64    // bytes in the part file
	file     *os.File // read handle on the part file, shared by readers (ReadAt)
	refs     int      // holders of file: the downloader (while downloading) and each reader
	ownRef   bool     // the downloader still holds its ref
	verified bool     // the digest check passed: the last byte may go out
	finished bool
	err      error
}

func (f *fill) finish(err error) {
	f.mu.Lock()
	f.finished, f.err = true, err
	owned := f.ownRef
	f.ownRef = false
	f.cond.Broadcast()
	f.mu.Unlock()
	if owned {
		f.release()
	}
}

func (f *fill) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refs--
	if f.refs == 0 && f.file != nil {
		f.file.Close()
		f.file = nil
	}
}

// serveFill streams a blob that is not stored yet.
func (c *Cache) serveFill(ctx *fasthttp.RequestCtx, r route, d v1.Hash) error {
	if r.up.Down() {
		return notCachedOffline(transport.BlobUnknownErrorCode, "upstream %s is down", r.up.Name())
	}
	f, err := c.joinFill(r, d)
	if err != nil {
		return err
	}
	if f == nil { // stored since we looked
		blob, n, err := c.store.Blob(d)
		if err != nil {
			return err
		}
		return c.serveFile(ctx, d, blob, n)
	}
	<-f.ready
	f.mu.Lock()
	err, size := f.err, f.size
	f.mu.Unlock()
	if err != nil {
		return toRegError(err, transport.BlobUnknownErrorCode)
	}
	setBlobHeaders(ctx, d)
	if ctx.IsHead() && size >= 0 {
		ctx.Response.SkipBody = true
		ctx.Response.Header.SetContentLength(int(size))
		return nil
	}
	// A range, or a size upstream did not announce: wait for the verified
	// blob and serve it from the store, so no unverified byte goes out.
	if size < 0 || len(ctx.Request.Header.Peek("Range")) > 0 {
		if err := f.wait(); err != nil {
			return toRegError(err, transport.BlobUnknownErrorCode)
		}
		blob, n, err := c.store.Blob(d)
		if err != nil {
			return err
		}
		return c.serveFile(ctx, d, blob, n)
	}
	rd := f.reader()
	if rd == nil { // finished between our look-up and now: it is stored
		blob, n, err := c.store.Blob(d)
		if err != nil {
			return toRegError(f.wait(), transport.BlobUnknownErrorCode)
		}
		return c.serveFile(ctx, d, blob, n)
	}
	// Count what actually went out: a response cut by a digest mismatch,
	// a shutdown or a client leaving shows in fill_responses_cut_total.
	rd.done = func(sent int64) {
		c.metrics.servedBytes.WithLabelValues("fill").Add(float64(sent))
		if sent < size {
			c.metrics.fillsCut.Inc()
		}
	}
	ctx.SetBodyStream(rd, int(size))
	return nil
}

// joinFill returns the fill for d, starting it if none runs, or nil if the
// blob was stored meanwhile. Fills leave the map only after their commit,
// so looking at the store under the lock rules out a second download.
func (c *Cache) joinFill(r route, d v1.Hash) (*fill, error) {
	c.fillsMu.Lock()
	defer c.fillsMu.Unlock()
	if f := c.fills[d.String()]; f != nil {
		c.metrics.fillWaiters.Inc()
		return f, nil
	}
	if c.store.HasBlob(d) {
		return nil, nil
	}
	if c.ctx.Err() != nil { // Close has begun: no new downloads
		return nil, newError(http.StatusServiceUnavailable, transport.UnavailableErrorCode, "shutting down")
	}
	f := &fill{digest: d, ready: make(chan struct{}), size: -1}
	f.cond = sync.NewCond(&f.mu)
	c.fills[d.String()] = f
	c.work.Add(1)
	c.metrics.fillsInFlight.Inc()
	go c.runFill(f, r)
	return f, nil
}

func (c *Cache) runFill(f *fill, r route) {
	defer c.work.Done()
	defer c.metrics.fillsInFlight.Dec()
	err := c.download(f, r)
	if err != nil {
		c.log.Warn("blob fill failed", "repo", r.key, "digest", f.digest, "err", err)
	}
	// Leave the map before waking waiters: a new request then either finds
	// the committed blob or starts a new fill; failures are not cached.
	c.fillsMu.Lock()
	delete(c.fills, f.digest.String())
	c.fillsMu.Unlock()
	select {
	case <-f.ready:
	default:
		f.mu.Lock()
		f.err = err
		f.mu.Unlock()
		close(f.ready)
	}
	f.finish(err)
}

// download fetches the blob into a session and commits it after the digest
// and size check. It runs on the cache's context, not a client's.
func (c *Cache) download(f *fill, r route) error {
	body, size, err := c.openBlob(r, f.digest, 0)
	if err != nil {
		return err
	}
	defer func() { body.Close() }()
	sess, err := c.store.Begin(store.KindFill)
	if err != nil {
		return err
	}
	defer sess.Abort()
	w, err := sess.Blob(f.digest, size)
	if err != nil {
		return err
	}
	rf, err := os.Open(w.Path())
	if err != nil {
		w.Discard()
		return err
	}
	f.mu.Lock()
	f.size, f.file, f.refs, f.ownRef = size, rf, 1, true // finish drops the downloader's ref
	f.mu.Unlock()
	close(f.ready)

	buf := make([]byte, fillChunk)
	resumes := 0
	for {
		n, rerr := body.Read(buf) // the upstream bounds idle time
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				w.Discard()
				return err
			}
			f.mu.Lock()
			f.written += int64(n)
			f.cond.Broadcast()
			f.mu.Unlock()
		}
		if rerr == io.EOF || (rerr != nil && size >= 0 && f.written == size) {
			break
		}
		if rerr != nil {
			if resumes == fillResumes || c.ctx.Err() != nil {
				w.Discard()
				return rerr
			}
			resumes++
			body.Close()
			c.log.Info("resuming blob download", "digest", f.digest, "offset", f.written, "err", rerr)
			if body, _, err = c.openBlob(r, f.digest, f.written); err != nil {
				body = io.NopCloser(nil)
				w.Discard()
				return err
			}
		}
	}
	if err := w.Verify(); err != nil {
		w.Discard()
		return err
	}
	f.mu.Lock()
	f.verified = true // clients get their last byte now, not after the fsync
	f.cond.Broadcast()
	f.mu.Unlock()
	if err := w.Close(); err != nil {
		return err
	}
	sess.Link(r.key, f.digest)
	return sess.Commit()
}

// openBlob opens the blob upstream from offset on. Response headers must
// come within fillHeaderTimeout (a silently dead uplink must not keep
// waiting clients for minutes); the body then reads until Close, which
// ends the request's context.
func (c *Cache) openBlob(r route, d v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	ctx, cancel := context.WithCancelCause(c.ctx)
	timer := time.AfterFunc(fillHeaderTimeout, func() { cancel(context.DeadlineExceeded) })
	body, size, err := r.up.Blob(ctx, r.repo, d, offset)
	if !timer.Stop() && err == nil { // headers came, but too late: the context is gone
		body.Close()
		err = context.DeadlineExceeded
	}
	if err != nil {
		cancel(nil)
		return nil, 0, err
	}
	return &closeCancels{ReadCloser: body, cancel: cancel}, size, nil
}

type closeCancels struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b *closeCancels) Close() error {
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// wait blocks until the fill has finished and returns its outcome.
func (f *fill) wait() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for !f.finished {
		f.cond.Wait()
	}
	return f.err
}

// reader returns a tail reader on the part file, or nil if the fill has
// already finished and let go of it.
func (f *fill) reader() *tailReader {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.file == nil || f.finished {
		return nil
	}
	f.refs++
	return &tailReader{f: f}
}

// tailReader follows a fill's part file as it grows.
type tailReader struct {
	f      *fill
	off    int64
	closed bool
	done   func(sent int64) // accounts for what the client received
}

func (t *tailReader) Read(p []byte) (int, error) {
	f := t.f
	f.mu.Lock()
	var limit int64
	for {
		if f.err != nil {
			f.mu.Unlock()
			return 0, f.err
		}
		limit = f.written
		if !f.verified && limit >= f.size {
			limit = f.size - 1 // the last byte waits for the digest check
		}
		if limit > t.off || ((f.verified || f.finished) && t.off >= f.size) {
			break
		}
		f.cond.Wait()
	}
	file := f.file
	f.mu.Unlock()
	if t.off >= limit {
		return 0, io.EOF
	}
	if int64(len(p)) > limit-t.off {
		p = p[:limit-t.off]
	}
	n, err := file.ReadAt(p, t.off)
	t.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Close lets go of the part file; fasthttp calls it after the response.
func (t *tailReader) Close() error {
	if !t.closed {
		t.closed = true
		t.f.release()
		if t.done != nil {
			t.done(t.off)
		}
	}
	return nil
}
