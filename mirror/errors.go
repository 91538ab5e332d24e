package mirror

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Error describes a failed upstream call. The cache inspects it through its
// methods, so it needs no import of this package.
type Error struct {
	Upstream string
	Op       string // "manifest", "head", "blob", "tags"
	Status   int    // the HTTP status, 0 when no answer came
	Mismatch bool   // upstream content did not match its digest
	Err      error
}

func (e *Error) Error() string {
	switch {
	case e.Mismatch:
		return fmt.Sprintf("upstream %s: %s: %v", e.Upstream, e.Op, e.Err)
	case e.Status != 0:
		return fmt.Sprintf("upstream %s: %s: %d %s: %v", e.Upstream, e.Op, e.Status, http.StatusText(e.Status), e.Err)
	}
	return fmt.Sprintf("upstream %s: %s: %v", e.Upstream, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// NotFound is a definite answer: upstream says the thing does not exist.
func (e *Error) NotFound() bool { return e.Status == http.StatusNotFound }

// Unavailable means no usable answer: no connection, a timeout, a 5xx or a
// 429. Cached content may be served instead.
func (e *Error) Unavailable() bool {
	return !e.Mismatch && (e.Status == 0 || e.Status >= 500 || e.Status == http.StatusTooManyRequests)
}

// Denied means upstream refused access: wrong credentials, or (Docker Hub)
// a repository that does not exist.
func (e *Error) Denied() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// TooManyRequests means upstream rate-limited us.
func (e *Error) TooManyRequests() bool { return e.Status == http.StatusTooManyRequests }

// BadContent means upstream sent bytes that do not match their digest.
func (e *Error) BadContent() bool { return e.Mismatch }

// ErrDown is the cause of calls refused at once because the upstream is
// marked down.
var ErrDown = errors.New("marked down after repeated failures; a background probe watches for its return")

// isFailure says whether err counts against the upstream's health: the
// uplink or the registry is failing, as opposed to a definite answer or the
// caller giving up.
func isFailure(ctx context.Context, err error) bool {
	var ue *Error
	if !errors.As(err, &ue) || ue.Mismatch {
		return false
	}
	if ue.Status == 0 {
		// A cancelled caller is not the upstream's fault; a deadline is
		// (also one the caller enforces by cancelling with that cause).
		return ctx.Err() == nil || errors.Is(context.Cause(ctx), context.DeadlineExceeded)
	}
	return ue.Status >= 500 || ue.Status == http.StatusTooManyRequests
}
