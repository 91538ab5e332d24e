package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BlobBody is a blob being downloaded under the upstream's transfer policy:
//   - response headers within RequestTimeout (a silently dead uplink must
//     not keep clients waiting for minutes),
//   - a body silent for BodyIdleTimeout is broken,
//   - a broken body is resumed with Range from where it broke, up to
//     BlobResumes times,
//   - the whole download, resumes included, within BlobTimeout,
//   - never more than MaxBlobSize bytes, nor more than upstream announced.
//
// The caller verifies the bytes (the store does, as it writes them) and
// closes the body.
type BlobBody struct {
	u       *Upstream
	ctx     context.Context // the download's, bounded by BlobTimeout
	cancel  context.CancelFunc
	repo    string
	digest  v1.Hash
	size    int64 // total size, -1 if upstream does not say
	off     int64 // offset of the next byte
	cur     io.ReadCloser
	resumes int
}

// Blob opens blob d of repo from offset on. size is its size if the caller
// knows it (from a manifest), else -1; the size returned is the blob's total
// size, or -1 if upstream did not say. The body is a *BlobBody.
func (u *Upstream) Blob(ctx context.Context, repo string, d v1.Hash, offset, size int64) (io.ReadCloser, int64, error) {
	b := &BlobBody{u: u, repo: repo, digest: d, size: size, off: offset}
	b.ctx, b.cancel = context.WithTimeout(ctx, u.opts.BlobTimeout)
	if err := b.open(); err != nil {
		b.cancel()
		return nil, 0, err
	}
	return b, b.size, nil
}

// Size is the blob's total size, or -1 if upstream did not say.
func (b *BlobBody) Size() int64 { return b.size }

func (b *BlobBody) fail(invalid bool, err error) error {
	return b.u.failed(&Error{Upstream: b.u.opts.Name, Op: "blob", Invalid: invalid, Err: err})
}

// open requests the blob from b.off on.
func (b *BlobBody) open() error {
	reqCtx, cancel := context.WithCancelCause(b.ctx)
	timer := time.AfterFunc(b.u.opts.RequestTimeout, func() { cancel(context.DeadlineExceeded) })
	// The headers' deadline, for sharing it between URLs (the body may
	// take longer: the context itself has none).
	reqCtx = context.WithValue(reqCtx, headerDeadlineKey{}, time.Now().Add(b.u.opts.RequestTimeout))
	header := http.Header{}
	switch {
	case b.off > 0 && b.size > b.off:
		// Both ends: some registries (go-containerregistry's) refuse an
		// open range.
		header.Set("Range", "bytes="+strconv.FormatInt(b.off, 10)+"-"+strconv.FormatInt(b.size-1, 10))
	case b.off > 0:
		header.Set("Range", "bytes="+strconv.FormatInt(b.off, 10)+"-")
	}
	resp, err := b.u.do(reqCtx, "blob", http.MethodGet, b.repo, "/blobs/"+b.digest.String(), nil, header)
	if !timer.Stop() && err == nil { // headers came, but too late: the request is gone
		resp.Body.Close()
		err = b.fail(false, fmt.Errorf("no answer within %v", b.u.opts.RequestTimeout))
	}
	if err != nil {
		cancel(nil)
		return err
	}
	total, skip := int64(-1), int64(0)
	switch {
	case resp.StatusCode == http.StatusOK:
		total, skip = resp.ContentLength, b.off // upstream ignored Range: skip what we have
	case resp.StatusCode == http.StatusPartialContent && b.off > 0:
		start, t, ok := contentRange(resp.Header.Get("Content-Range"))
		if !ok || start != b.off {
			resp.Body.Close()
			cancel(nil)
			return b.fail(true, fmt.Errorf("asked for bytes from %d, got Content-Range %q", b.off, resp.Header.Get("Content-Range")))
		}
		total = t
	default:
		cancel(nil)
		return b.u.failed(responseError(b.u.opts.Name, "blob", resp))
	}
	body := b.u.blobBody(resp.Body, cancel)
	switch max := b.u.opts.MaxBlobSize; {
	case b.size >= 0 && total >= 0 && total != b.size:
		body.Close()
		return b.fail(true, fmt.Errorf("%s was %d bytes, is now %d", b.digest, b.size, total))
	case max > 0 && total > max:
		body.Close()
		return b.fail(true, fmt.Errorf("%s is %d bytes, more than the limit of %d", b.digest, total, max))
	}
	if b.size < 0 {
		b.size = total
	}
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, body, skip); err != nil {
			body.Close()
			return b.fail(false, redactErr(err))
		}
	}
	b.cur = body
	return nil
}

func (b *BlobBody) Read(p []byte) (int, error) {
	for {
		if b.cur == nil {
			if err := b.open(); err != nil {
				return 0, err
			}
		}
		n, err := b.cur.Read(p)
		b.off += int64(n)
		switch max := b.u.opts.MaxBlobSize; {
		case max > 0 && b.off > max:
			return n, b.fail(true, fmt.Errorf("%s is longer than the limit of %d bytes", b.digest, max))
		case b.size >= 0 && b.off > b.size:
			return n, b.fail(true, fmt.Errorf("%s is longer than the %d bytes announced", b.digest, b.size))
		case err == nil:
			return n, nil
		case err == io.EOF && (b.size < 0 || b.off == b.size):
			return n, io.EOF
		}
		// The body broke, or ended before its announced size.
		b.cur.Close()
		b.cur = nil
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if b.ctx.Err() != nil {
			if errors.Is(b.ctx.Err(), context.DeadlineExceeded) {
				err = fmt.Errorf("the download did not finish within %v", b.u.opts.BlobTimeout)
			}
			return n, b.fail(false, err)
		}
		if b.size < 0 || b.resumes >= b.u.opts.BlobResumes {
			return n, b.fail(false, redactErr(err))
		}
		b.resumes++
		b.u.opts.Logger.Info("resuming blob download", "upstream", b.u.opts.Name, "digest", b.digest,
			"offset", b.off, "err", redactErr(err))
		if n > 0 {
			return n, nil // resumed on the next Read
		}
	}
}

// Close ends the download.
func (b *BlobBody) Close() error {
	var err error
	if b.cur != nil {
		err = b.cur.Close()
		b.cur = nil
	}
	b.cancel()
	return err
}

// contentRange reads "bytes a-b/total" into its start and total (-1 for *).
func contentRange(v string) (start, total int64, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	rng, tot, hasTotal := strings.Cut(spec, "/")
	first, _, hasDash := strings.Cut(rng, "-")
	if !found || !hasTotal || !hasDash {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	if tot == "*" {
		return start, -1, true
	}
	total, err = strconv.ParseInt(tot, 10, 64)
	return start, total, err == nil && total > start
}

// blobBody wraps a blob response body: it counts bytes as fetched from
// upstream, and closes the body when a read waits longer than the idle
// timeout, since a dead uplink often drops packets silently instead of
// resetting; the read then fails and the download can resume. Close also
// ends the request.
func (u *Upstream) blobBody(body io.ReadCloser, cancel context.CancelCauseFunc) io.ReadCloser {
	b := &idleBody{ReadCloser: body, idle: u.opts.BodyIdleTimeout, cancel: cancel,
		counter: u.opts.Metrics.fetchedBytes.WithLabelValues(u.opts.Name)}
	b.timer = time.AfterFunc(b.idle, func() { body.Close() })
	b.timer.Stop()
	return b
}

type idleBody struct {
	io.ReadCloser
	idle    time.Duration
	timer   *time.Timer
	cancel  context.CancelCauseFunc
	counter interface{ Add(float64) }
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.ReadCloser.Read(p)
	if !b.timer.Stop() && err != nil {
		err = fmt.Errorf("no data for %v: %w", b.idle, err)
	}
	b.counter.Add(float64(n))
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}
