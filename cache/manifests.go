package cache

import (
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/singleflight"
)

func isDigest(ref string) bool { return strings.Contains(ref, ":") }

func (c *Cache) manifest(ctx *fasthttp.RequestCtx, r route) (outcome, error) {
	var (
		d   v1.Hash
		out outcome
		err error
	)
	if isDigest(r.ref) {
		d, _ = v1.NewHash(r.ref)     // validated by the route
		if d.Algorithm != "sha256" { // manifests are verified and stored by sha256
			return outcomeNone, newError(http.StatusNotFound, transport.ManifestUnknownErrorCode, "only sha256 manifest digests are served")
		}
		out, err = c.manifestByDigest(r, d)
	} else {
		d, out, err = c.resolveTag(r)
	}
	if err != nil {
		return out, mapManifestErr(err)
	}
	m, f, err := c.store.OpenManifest(d)
	if errors.Is(err, store.ErrNotFound) && out == outcomeHit && isDigest(r.ref) {
		// Linked, but the content is gone (removed since): fetch it again.
		if out, err = c.fetchByDigest(r, d); err == nil {
			m, f, err = c.store.OpenManifest(d)
		}
	}
	if err != nil {
		return out, mapManifestErr(err)
	}
	if accept := ctx.Request.Header.PeekAll("Accept"); !accepts(accept, m.MediaType) {
		if f != nil {
			f.Close()
		}
		if m, f, err = c.negotiate(r, m, accept); err != nil {
			return out, mapManifestErr(err)
		}
	}
	c.serveManifest(ctx, m, f)
	return out, nil
}

// serveManifest sends a manifest: a small one from the store's shared
// buffer (no copy per client), a large one from its file with sendfile.
func (c *Cache) serveManifest(ctx *fasthttp.RequestCtx, m store.Manifest, f *os.File) {
	etag := `"` + m.Digest.String() + `"`
	ctx.SetContentType(m.MediaType)
	ctx.Response.Header.Set("Docker-Content-Digest", m.Digest.String())
	ctx.Response.Header.Set("Etag", etag)
	if inm := string(ctx.Request.Header.Peek("If-None-Match")); inm == etag || inm == m.Digest.String() {
		if f != nil {
			f.Close()
		}
		ctx.SetStatusCode(http.StatusNotModified)
		return
	}
	if ctx.IsHead() {
		if f != nil {
			f.Close()
		}
		ctx.Response.SkipBody = true
		ctx.Response.Header.SetContentLength(int(m.Size))
		return
	}
	if f != nil {
		ctx.SetBodyStream(f, int(m.Size))
	} else {
		ctx.Response.SetBodyRaw(m.Bytes)
	}
	c.metrics.store.Add(float64(m.Size))
}

func mapManifestErr(err error) error {
	return toRegError(err, transport.ManifestUnknownErrorCode)
}

// manifestByDigest makes sure the manifest is stored and belongs to the
// repository: by digest it is immutable, so once linked upstream is never
// asked again. Content stored for another repository is served only after
// upstream confirmed that this repository has it too (a registry answers
// 404 for a digest that is not in the repository); offline it is not.
func (c *Cache) manifestByDigest(r route, d v1.Hash) (outcome, error) {
	if c.store.Linked(r.key, d) {
		return outcomeHit, nil
	}
	return c.fetchByDigest(r, d)
}

// fetchByDigest stores manifest d for r's repository, or links it if it
// is stored for another one, once upstream confirmed r has it.
func (c *Cache) fetchByDigest(r route, d v1.Hash) (outcome, error) {
	stored := c.store.HasManifest(d)
	_, err, _ := c.manifests.Do(r.key+"@"+d.String(), func() (any, error) {
		if !c.track() {
			return nil, errShuttingDown
		}
		defer c.work.Done()
		if c.store.Linked(r.key, d) && c.store.HasManifest(d) {
			return nil, nil
		}
		if stored { // confirm with a HEAD, then link what we have
			if _, err := r.up.Head(c.ctx, r.repo, d.String()); err != nil {
				return nil, err
			}
			return nil, c.store.Link(r.key, d)
		}
		_, err := c.fetchManifest(r, d.String(), "")
		return nil, err
	})
	if err == nil && !stored {
		return outcomeMiss, nil
	}
	return outcomeHit, err
}

var errShuttingDown = newError(http.StatusServiceUnavailable, transport.UnavailableErrorCode, "shutting down")

// resolveTag returns the digest a tag should be served as: from the store
// while fresh; when stale, what upstream says within the revalidation
// deadline, else the cached one (the revalidation goes on in the
// background and its answer is kept for the next request); fetched when
// missing. Concurrent requests for one tag share one upstream round.
func (c *Cache) resolveTag(r route) (v1.Hash, outcome, error) {
	cached, err := c.store.Tag(r.key, r.ref)
	if err == nil {
		// A confirmation in the future (a clock that was set back, a Pi
		// without a real-time clock) is stale, not fresh for ever.
		if age := c.now().Sub(cached.CheckedAt); age >= 0 && age < r.up.tagTTL {
			return cached.Digest, outcomeHit, nil
		}
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return v1.Hash{}, outcomeNone, err
	}
	haveCached := err == nil
	if haveCached && r.up.Down() {
		return cached.Digest, outcomeStale, nil
	}
	ch := c.manifests.DoChan(r.key+":"+r.ref, func() (any, error) {
		if !c.track() {
			return nil, errShuttingDown
		}
		defer c.work.Done()
		if !haveCached {
			d, err := c.fetchManifest(r, r.ref, r.ref)
			return tagResult{d, outcomeMiss}, err
		}
		return c.revalidate(r, cached)
	})
	var res singleflight.Result
	if !haveCached {
		res = <-ch
	} else {
		timer := time.NewTimer(r.up.revalidateTimeout)
		defer timer.Stop()
		select {
		case res = <-ch:
		case <-timer.C:
			c.log.Info("serving stale tag: upstream is slow to answer", "repo", r.key, "tag", r.ref,
				"waited", r.up.revalidateTimeout.String())
			return cached.Digest, outcomeStale, nil
		}
	}
	if res.Err != nil {
		return v1.Hash{}, outcomeNone, res.Err
	}
	tr := res.Val.(tagResult)
	return tr.d, tr.out, nil
}

// tagResult is what one upstream round for a tag yields to all its waiters.
type tagResult struct {
	d   v1.Hash
	out outcome
}

// revalidate asks upstream whether a stale tag moved, fetching it if it did.
func (c *Cache) revalidate(r route, cached store.Tag) (any, error) {
	desc, err := r.up.Head(c.ctx, r.repo, r.ref)
	switch {
	case err == nil && desc.Digest == cached.Digest:
		if err := c.store.ConfirmTag(r.key, r.ref, cached.Digest, c.now()); err != nil && !errors.Is(err, store.ErrNoSpace) {
			return nil, err
		}
		return tagResult{cached.Digest, outcomeHit}, nil
	case err == nil: // moved, or upstream did not say: fetch it
		d, err := c.fetchManifest(r, r.ref, r.ref)
		if err != nil && (isUnavailable(err) || errors.Is(err, store.ErrNoSpace)) {
			c.log.Warn("serving stale tag", "repo", r.key, "tag", r.ref, "err", err)
			return tagResult{cached.Digest, outcomeStale}, nil
		}
		return tagResult{d, outcomeMiss}, err
	case isNotFound(err):
		// Every URL of the upstream says it is gone: that wins over the cache.
		if err := c.store.DeleteTag(r.key, r.ref); err != nil && !errors.Is(err, store.ErrNoSpace) {
			return nil, err
		}
		return nil, err
	default:
		c.log.Warn("serving stale tag", "repo", r.key, "tag", r.ref, "err", err)
		return tagResult{cached.Digest, outcomeStale}, nil
	}
}

// fetchManifest fetches ref from upstream and stores it, tagging it when tag
// is set, in one session.
func (c *Cache) fetchManifest(r route, ref, tag string) (v1.Hash, error) {
	b, desc, err := r.up.Manifest(c.ctx, r.repo, ref)
	if err != nil {
		return v1.Hash{}, err
	}
	sess, err := c.store.Begin(store.KindFill, r.key)
	if err != nil {
		return v1.Hash{}, err
	}
	defer sess.Abort()
	d, err := sess.Manifest(r.key, b, string(desc.MediaType))
	if err != nil {
		c.noteNoSpace(err)
		return v1.Hash{}, err
	}
	if tag != "" {
		sess.Tag(r.key, tag, d)
	}
	if err := sess.Commit(); err != nil {
		c.noteNoSpace(err)
		return v1.Hash{}, err
	}
	c.log.Debug("stored manifest", "repo", r.key, "ref", ref, "digest", d, "size", strconv.Itoa(len(b)))
	return d, nil
}

func (c *Cache) noteNoSpace(err error) {
	if errors.Is(err, store.ErrNoSpace) {
		c.metrics.fillsRefused.WithLabelValues("disk_full").Inc()
	}
}
