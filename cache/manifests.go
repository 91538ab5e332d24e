package cache

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
	"github.com/valyala/fasthttp"
)

// manifestFetchTimeout bounds a manifest fetch from upstream, so that a cold
// request on a dead uplink fails instead of hanging.
const manifestFetchTimeout = 20 * time.Second

func (c *Cache) manifest(ctx *fasthttp.RequestCtx, r route) (outcome, error) {
	var (
		d   v1.Hash
		out outcome
		err error
	)
	if strings.Contains(r.ref, ":") {
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
	m, err := c.store.Manifest(d)
	if err != nil {
		return out, mapManifestErr(err)
	}
	ctx.SetContentType(m.MediaType)
	ctx.Response.Header.Set("Docker-Content-Digest", m.Digest.String())
	ctx.Response.Header.Set("Etag", `"`+m.Digest.String()+`"`)
	ctx.SetBody(m.Bytes)
	if ctx.IsHead() {
		ctx.Response.SkipBody = true
		ctx.Response.Header.SetContentLength(len(m.Bytes))
	} else {
		c.metrics.servedBytes.WithLabelValues("store").Add(float64(len(m.Bytes)))
	}
	return out, nil
}

func mapManifestErr(err error) error {
	return toRegError(err, transport.ManifestUnknownErrorCode)
}

// manifestByDigest makes sure the manifest is stored and belongs to the
// repository: by digest it is immutable, so once linked upstream is never
// asked again. Content stored for another repository is confirmed with
// upstream first (a registry answers 404 for a digest that is not in the
// repository), unless upstream is unreachable.
func (c *Cache) manifestByDigest(r route, d v1.Hash) (outcome, error) {
	if c.store.Linked(r.key, d) {
		return outcomeHit, nil
	}
	_, err, _ := c.manifests.Do(r.key+"@"+d.String(), func() (any, error) {
		if c.store.Linked(r.key, d) {
			return d, nil
		}
		return c.fetchManifest(r, d.String(), "")
	})
	if err != nil && (isUnavailable(err) || r.up.Down()) && c.store.HasBlob(d) {
		return outcomeStale, nil
	}
	return outcomeMiss, err
}

// resolveTag returns the digest a tag should be served as: from the store
// while fresh, revalidated with a HEAD when stale, the stale one when
// upstream cannot answer, fetched when missing or moved. Concurrent requests
// for one tag share one upstream round.
func (c *Cache) resolveTag(r route) (v1.Hash, outcome, error) {
	cached, err := c.store.Tag(r.key, r.ref)
	if err == nil && c.now().Sub(cached.CheckedAt) < r.up.tagTTL {
		return cached.Digest, outcomeHit, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return v1.Hash{}, outcomeNone, err
	}
	haveCached := err == nil
	if haveCached && r.up.Down() {
		return cached.Digest, outcomeStale, nil
	}
	v, err, _ := c.manifests.Do(r.key+":"+r.ref, func() (any, error) {
		if !haveCached {
			d, err := c.fetchManifest(r, r.ref, r.ref)
			return tagResult{d, outcomeMiss}, err
		}
		return c.revalidate(r, cached)
	})
	if err != nil {
		return v1.Hash{}, outcomeNone, err
	}
	res := v.(tagResult)
	return res.d, res.out, nil
}

// tagResult is what one upstream round for a tag yields to all its waiters.
type tagResult struct {
	d   v1.Hash
	out outcome
}

// revalidate asks upstream (HEAD, short deadline) whether a stale tag moved.
func (c *Cache) revalidate(r route, cached store.Tag) (any, error) {
	desc, err := r.up.Head(c.ctx, r.repo, r.ref)
	var ue upstreamError
	switch {
	case err == nil && desc.Digest == cached.Digest:
		if err := c.store.ConfirmTag(r.key, r.ref, cached.Digest, c.now()); err != nil {
			return nil, err
		}
		return tagResult{cached.Digest, outcomeHit}, nil
	case err == nil: // moved, or upstream did not say: fetch it
		d, err := c.fetchManifest(r, r.ref, r.ref)
		if err != nil && isUnavailable(err) {
			c.log.Warn("serving stale tag", "repo", r.key, "tag", r.ref, "err", err)
			return tagResult{cached.Digest, outcomeStale}, nil
		}
		return tagResult{d, outcomeMiss}, err
	case errors.As(err, &ue) && ue.NotFound():
		// A definite answer wins over the cache.
		if err := c.store.DeleteTag(r.key, r.ref); err != nil {
			return nil, err
		}
		return nil, err
	default:
		c.log.Warn("serving stale tag", "repo", r.key, "tag", r.ref, "err", err)
		return tagResult{cached.Digest, outcomeStale}, nil
	}
}

func isNotFound(err error) bool {
	var ue upstreamError
	return errors.As(err, &ue) && ue.NotFound()
}

func isUnavailable(err error) bool {
	var ue upstreamError
	return errors.As(err, &ue) && ue.Unavailable()
}

// fetchManifest fetches ref from upstream and stores it, tagging it when tag
// is set, in one session.
func (c *Cache) fetchManifest(r route, ref, tag string) (v1.Hash, error) {
	if r.up.Down() {
		return v1.Hash{}, notCachedOffline(transport.ManifestUnknownErrorCode, "upstream %s is down", r.up.Name())
	}
	ctx, cancel := context.WithTimeout(c.ctx, manifestFetchTimeout)
	defer cancel()
	b, desc, err := r.up.Manifest(ctx, r.repo, ref)
	if err != nil {
		return v1.Hash{}, err
	}
	sess, err := c.store.Begin(store.KindFill)
	if err != nil {
		return v1.Hash{}, err
	}
	defer sess.Abort()
	d, err := sess.Manifest(r.key, b, string(desc.MediaType))
	if err != nil {
		return v1.Hash{}, err
	}
	if tag != "" {
		sess.Tag(r.key, tag, d)
	}
	if err := sess.Commit(); err != nil {
		return v1.Hash{}, err
	}
	c.log.Debug("stored manifest", "repo", r.key, "ref", ref, "digest", d, "size", strconv.Itoa(len(b)))
	return d, nil
}
