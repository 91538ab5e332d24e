package cache

import (
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
	"github.com/valyala/fasthttp"
)

// blob serves a blob under a repository. Content is shared between
// repositories on disk, but a blob is served under repository R only if
// R's manifests reference it or upstream confirmed that R has it: with
// credentials configured, anything else would hand private content to
// whoever knows its digest.
func (c *Cache) blob(ctx *fasthttp.RequestCtx, r route) (outcome, error) {
	d, _ := v1.NewHash(r.ref) // validated by the route
	linked := c.store.Linked(r.key, d)
	f, size, err := c.store.Blob(d)
	switch {
	case err == nil:
		if !linked {
			if err := c.confirmBlob(r, d); err != nil {
				f.Close()
				return outcomeNone, toRegError(err, transport.BlobUnknownErrorCode)
			}
		}
		return outcomeHit, c.serveFile(ctx, d, f, size)
	case !errors.Is(err, store.ErrNotFound):
		return outcomeNone, err
	case ctx.IsHead():
		return c.headCold(ctx, r, d, linked)
	}
	return outcomeFill, c.serveFill(ctx, r, d, linked)
}

// confirmBlob asks upstream whether r's repository has blob d and, if it
// does, records the link. Concurrent asks share one request.
func (c *Cache) confirmBlob(r route, d v1.Hash) error {
	_, err, _ := c.manifests.Do("blob "+r.key+"@"+d.String(), func() (any, error) {
		if !c.track() {
			return nil, errShuttingDown
		}
		defer c.work.Done()
		if _, err := r.up.BlobHead(c.ctx, r.repo, d); err != nil {
			return nil, err
		}
		return nil, c.store.Link(r.key, d)
	})
	return err
}

// headCold answers a HEAD of a blob that is not stored from upstream's
// HEAD (or from a download in progress), without downloading it.
func (c *Cache) headCold(ctx *fasthttp.RequestCtx, r route, d v1.Hash, linked bool) (outcome, error) {
	if p := c.store.Join(d); p != nil {
		defer p.Release()
		if linked || p.Origin() == r.key {
			if size, err := p.Size(c.ctx); err == nil && size >= 0 {
				setBlobHeaders(ctx, d)
				ctx.Response.SkipBody = true
				ctx.Response.Header.SetContentLength(int(size))
				return outcomeFill, nil
			}
		}
	}
	v, err, _ := c.manifests.Do("blobhead "+r.key+"@"+d.String(), func() (any, error) {
		if !c.track() {
			return nil, errShuttingDown
		}
		defer c.work.Done()
		return r.up.BlobHead(c.ctx, r.repo, d)
	})
	if err != nil {
		return outcomeNone, toRegError(err, transport.BlobUnknownErrorCode)
	}
	setBlobHeaders(ctx, d)
	ctx.Response.SkipBody = true
	ctx.Response.Header.SetContentLength(int(v.(int64)))
	return outcomeMiss, nil
}

// serveFile serves a stored blob, whole or one byte range, with sendfile
// (fasthttp hands an *os.File body to the kernel).
func (c *Cache) serveFile(ctx *fasthttp.RequestCtx, d v1.Hash, f *os.File, size int64) error {
	setBlobHeaders(ctx, d)
	start, n, partial, ok := parseRange(ctx.Request.Header.Peek("Range"), size)
	if !ok {
		f.Close()
		e := newError(http.StatusRequestedRangeNotSatisfiable, transport.UnsupportedErrorCode, "range not satisfiable")
		e.rangeSize = size
		return e
	}
	if partial {
		ctx.SetStatusCode(http.StatusPartialContent)
		ctx.Response.Header.Set("Content-Range", contentRange(start, n, size))
		if _, err := f.Seek(start, 0); err != nil {
			f.Close()
			return err
		}
	}
	if ctx.IsHead() {
		f.Close()
		ctx.Response.SkipBody = true
		ctx.Response.Header.SetContentLength(int(n))
		return nil
	}
	ctx.SetBodyStream(f, int(n))
	c.metrics.store.Add(float64(n))
	return nil
}

func setBlobHeaders(ctx *fasthttp.RequestCtx, d v1.Hash) {
	ctx.SetContentType("application/octet-stream")
	ctx.Response.Header.Set("Docker-Content-Digest", d.String())
	ctx.Response.Header.Set("Etag", `"`+d.String()+`"`)
	ctx.Response.Header.Set("Accept-Ranges", "bytes")
	ctx.Response.Header.Set("Cache-Control", "max-age=31536000")
}

func contentRange(start, n, size int64) string {
	return "bytes " + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(start+n-1, 10) + "/" + strconv.FormatInt(size, 10)
}

// parseRange reads a single "bytes=a-b", "bytes=a-" or "bytes=-n" range.
// Without a usable Range header it returns the whole blob (partial false);
// ok is false only for a well-formed range that lies outside the blob.
// Several ranges are answered with the whole blob, which RFC 9110 allows.
func parseRange(h []byte, size int64) (start, n int64, partial, ok bool) {
	spec, found := strings.CutPrefix(string(h), "bytes=")
	first, last, hasDash := strings.Cut(spec, "-")
	if !found || !hasDash || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	if first == "" { // a suffix: the last k bytes
		k, err := strconv.ParseInt(last, 10, 64)
		switch {
		case err != nil || k < 0:
			return 0, size, false, true
		case k == 0 || size == 0:
			return 0, 0, true, false
		}
		k = min(k, size)
		return size - k, k, true, true
	}
	a, err := strconv.ParseInt(first, 10, 64)
	if err != nil || a < 0 {
		return 0, size, false, true
	}
	if a >= size {
		return 0, 0, true, false
	}
	b := size - 1
	if last != "" {
		if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
			return 0, size, false, true
		}
		b = min(b, size-1)
	}
	return a, b - a + 1, true, true
}
