package cache

import (
	"context"
	"errors"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
	"github.com/valyala/fasthttp"
	"net/http"
)

// A fill is a pull-through download of a blob: upstream's body, under the
// upstream's transfer policy, copied into a store writer. The store makes
// it the only write of that digest and lets every client follow it as it
// grows; fills, mirror syncs and imports of the same blob share one
// download. Fills are bounded: a slot from the upstream's and from the
// global limit, waited for briefly (then 429); and a fill nobody follows
// any more is cancelled after a grace period unless it is nearly done.

// errAbandoned is why a fill that nobody waited for was cancelled.
var errAbandoned = errors.New("nobody waits for the download any more")

// serveFill streams a blob that is not stored yet.
func (c *Cache) serveFill(ctx *fasthttp.RequestCtx, r route, d v1.Hash, linked bool) error {
	for attempt := 0; ; attempt++ {
		p, err := c.joinOrStart(r, d)
		if err != nil {
			return toRegError(err, transport.BlobUnknownErrorCode)
		}
		if p == nil { // stored meanwhile
			return c.serveStored(ctx, r, d, linked)
		}
		if !linked && p.Origin() != r.key {
			// Someone else's download: this repository must have the blob too.
			if err := c.confirmBlob(r, d); err != nil {
				p.Release()
				return toRegError(err, transport.BlobUnknownErrorCode)
			}
			linked = true
		}
		err = c.streamPending(ctx, d, p)
		if err == nil {
			return nil
		}
		// A failure that belongs to the other repository (its upstream has
		// no such blob there, or refuses it) is not this one's, nor is a
		// download given up just as this request joined it: try again.
		if attempt < 2 && (repoSpecific(err) && p.Origin() != r.key || errors.Is(err, errAbandoned) || errors.Is(err, store.ErrAborted)) {
			continue
		}
		return toRegError(err, transport.BlobUnknownErrorCode)
	}
}

func (c *Cache) serveStored(ctx *fasthttp.RequestCtx, r route, d v1.Hash, linked bool) error {
	f, size, err := c.store.Blob(d)
	if err != nil {
		return err
	}
	if !linked && !c.store.Linked(r.key, d) {
		if err := c.confirmBlob(r, d); err != nil {
			f.Close()
			return toRegError(err, transport.BlobUnknownErrorCode)
		}
	}
	return c.serveFile(ctx, d, f, size)
}

// streamPending answers from a write in progress. It releases p.
func (c *Cache) streamPending(ctx *fasthttp.RequestCtx, d v1.Hash, p *store.Pending) error {
	defer p.Release()
	size, err := p.Size(c.ctx)
	if err != nil {
		return err
	}
	if ctx.IsHead() && size >= 0 {
		setBlobHeaders(ctx, d)
		ctx.Response.SkipBody = true
		ctx.Response.Header.SetContentLength(int(size))
		return nil
	}
	rangeHeader := ctx.Request.Header.Peek("Range")
	start, n, partial, ok := parseRange(rangeHeader, size)
	// A size upstream did not announce, or a range that ends before the
	// blob does: wait for the verified blob, so that no unverified byte
	// goes out unless its response can still be cut.
	if size < 0 || !ok || partial && start+n < size {
		f, total, err := p.Open(c.ctx)
		if err != nil {
			return err
		}
		return c.serveFile(ctx, d, f, total)
	}
	// The whole blob, or its rest (a client resuming with bytes=N-):
	// follow the download; the last byte waits for the digest check.
	r, err := p.FollowFrom(start)
	if err != nil {
		return err
	}
	setBlobHeaders(ctx, d)
	if partial {
		ctx.SetStatusCode(http.StatusPartialContent)
		ctx.Response.Header.Set("Content-Range", contentRange(start, n, size))
	}
	ctx.SetBodyStream(&fillBody{Follower: r, size: n, m: c.metrics}, int(n))
	return nil
}

// fillBody is a follower as a response body; fasthttp closes it when the
// response is done or cut, and the metrics count what really went out.
type fillBody struct {
	*store.Follower
	size int64
	m    *metrics
}

func (b *fillBody) Close() error {
	sent := b.Sent()
	b.m.servedBytes.WithLabelValues("fill").Add(float64(sent))
	if sent < b.size {
		b.m.fillsCut.Inc()
	}
	return b.Follower.Close()
}

// joinOrStart returns a handle on the write of d in progress, starting a
// download if there is none, or nil if d is stored.
func (c *Cache) joinOrStart(r route, d v1.Hash) (*store.Pending, error) {
	if p := c.store.Join(d); p != nil {
		c.metrics.fillWaiters.Inc()
		return p, nil
	}
	if c.store.HasBlob(d) {
		return nil, nil
	}
	release, joined, err := c.acquireFill(r.up, d)
	if joined != nil {
		c.metrics.fillWaiters.Inc()
		return joined, nil
	}
	if err != nil {
		if errors.Is(err, errBusy) {
			c.metrics.fillsRefused.WithLabelValues("busy").Inc()
		}
		return nil, err
	}
	if release == nil { // stored while waiting
		return nil, nil
	}
	if !c.track() {
		release()
		return nil, errShuttingDown
	}
	sess, err := c.store.Begin(store.KindFill, r.key)
	var w *store.BlobWriter
	var other *store.Pending
	if err == nil {
		w, other, err = sess.Blob(d, -1)
	}
	if w == nil {
		if sess != nil {
			sess.Abort()
		}
		release()
		c.work.Done()
		switch {
		case other != nil:
			c.metrics.fillWaiters.Inc()
			return other, nil
		case errors.Is(err, store.ErrExists):
			return nil, nil
		}
		c.noteNoSpace(err)
		return nil, err
	}
	p := w.Pending()
	c.metrics.fillsInFlight.Inc()
	go c.runFill(sess, w, r, d, release)
	return p, nil
}

// acquireFill takes a download slot of the upstream and one of the global
// limit, waiting at most FillLimits.Queue for them. While it waits,
// someone else may start downloading d, or finish: then it returns the
// write to join, or nothing at all (d is stored).
func (c *Cache) acquireFill(up *upstream, d v1.Hash) (release func(), joined *store.Pending, err error) {
	deadline := time.Now().Add(c.limits.Queue)
	var tick *time.Ticker
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	take := func(slots chan struct{}) (bool, *store.Pending, error) {
		for {
			select {
			case slots <- struct{}{}:
				return true, nil, nil
			default:
			}
			if p := c.store.Join(d); p != nil {
				return false, p, nil
			}
			if c.store.HasBlob(d) {
				return false, nil, nil
			}
			if time.Now().After(deadline) {
				return false, nil, errBusy
			}
			if tick == nil {
				tick = time.NewTicker(50 * time.Millisecond)
			}
			select {
			case slots <- struct{}{}:
				return true, nil, nil
			case <-tick.C:
			case <-c.ctx.Done():
				return false, nil, errShuttingDown
			}
		}
	}
	got, joined, err := take(up.fills)
	if !got {
		return nil, joined, err
	}
	if got, joined, err = take(c.fills); !got {
		<-up.fills
		return nil, joined, err
	}
	return func() { <-c.fills; <-up.fills }, nil, nil
}

func (c *Cache) runFill(sess *store.Session, w *store.BlobWriter, r route, d v1.Hash, release func()) {
	defer c.work.Done()
	defer release()
	defer c.metrics.fillsInFlight.Dec()
	defer sess.Abort()
	ctx, cancel := context.WithCancelCause(c.ctx)
	defer cancel(nil)
	stop := c.watchInterest(w, cancel)
	defer stop()
	if err := c.download(ctx, sess, w, r, d); err != nil {
		if errors.Is(context.Cause(ctx), errAbandoned) {
			err = errAbandoned
			c.metrics.fillsAbandoned.Inc()
		}
		w.Discard(err)
		c.noteNoSpace(err)
		c.log.Warn("blob fill failed", "repo", r.key, "digest", d, "err", err)
	}
}

// download fetches the blob into the writer and commits it after the
// digest and size check. It runs on the cache's context, not a client's.
func (c *Cache) download(ctx context.Context, sess *store.Session, w *store.BlobWriter, r route, d v1.Hash) error {
	body, size, err := r.up.Blob(ctx, r.repo, d, 0, -1)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := w.SetSize(size); err != nil {
		return err
	}
	if _, err := w.ReadFrom(body); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	sess.Link(r.key, d)
	return sess.Commit()
}

// watchInterest cancels a download that nobody has followed for the grace
// period, unless it is close to done (finishing it is cheaper than asking
// again). It returns a function that stops the watch.
func (c *Cache) watchInterest(w *store.BlobWriter, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	every := max(c.limits.Abandon/4, 50*time.Millisecond)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			n, idle := w.Interest()
			if n > 0 || time.Since(idle) < c.limits.Abandon {
				continue
			}
			if written, size := w.Progress(); closeToDone(written, size) {
				continue
			}
			cancel(errAbandoned)
			return
		}
	}()
	return func() { close(done) }
}

// closeToDone: a quarter or 16 MiB left at most.
func closeToDone(written, size int64) bool {
	return size > 0 && (size-written <= 16<<20 || written*4 >= size*3)
}
