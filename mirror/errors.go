package mirror

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Error describes a failed upstream call. The cache inspects it through its
// methods, so it needs no import of this package.
type Error struct {
	Upstream string
	Op       string // "manifest", "head", "blob", "tags", "referrers"
	Status   int    // the HTTP status, 0 when no usable answer came
	Mismatch bool   // upstream content did not match its digest
	Invalid  bool   // upstream sent something that is not what was asked for (not a manifest, too large)
	Refused  bool   // upstream redirected somewhere Outpost does not go
	// RetryAfter is how long upstream asked us to wait (Retry-After on a
	// 429 or 503), 0 if it did not say.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("upstream %s: %s: %d %s: %v", e.Upstream, e.Op, e.Status, http.StatusText(e.Status), e.Err)
	}
	return fmt.Sprintf("upstream %s: %s: %v", e.Upstream, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// NotFound is a definite answer: every URL of the upstream says the thing
// does not exist.
func (e *Error) NotFound() bool { return e.Status == http.StatusNotFound }

// Denied means upstream refused access: wrong credentials, or (Docker Hub)
// a repository that does not exist.
func (e *Error) Denied() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// Unavailable means no usable answer: no connection, a timeout, a 5xx, a
// 429, or URLs that disagree. Cached content may be served instead.
func (e *Error) Unavailable() bool {
	return !e.BadContent() && (e.Status == 0 || e.Status >= 500 || e.Status == http.StatusTooManyRequests)
}

// TooManyRequests means upstream rate-limited us.
func (e *Error) TooManyRequests() bool { return e.Status == http.StatusTooManyRequests }

// BadContent means upstream answered with something that must not be
// stored or served: bytes that do not match their digest, a body that is
// not a manifest, or a redirect Outpost refuses.
func (e *Error) BadContent() bool { return e.Mismatch || e.Invalid || e.Refused }

// ErrDown is the cause of calls refused at once: the upstream is marked
// down and another request is already trying it.
var ErrDown = errors.New("marked down after repeated connection failures; a background probe watches for its return")

// isFailure says whether err counts against the upstream's health: the
// uplink or the registry is failing at the connection level (refused,
// reset, no answer within the request's own budget, 5xx), as opposed to a
// definite answer, a rate limit, bad content or the caller going away.
func isFailure(ctx context.Context, err error) bool {
	var ue *Error
	if err == nil || !errors.As(err, &ue) || ue.BadContent() || errors.Is(err, ErrDown) || errors.Is(err, errNoSlot) {
		return false
	}
	if ue.Status == 0 {
		// A cancelled caller is not the upstream's fault; a spent budget is.
		return !errors.Is(ctx.Err(), context.Canceled) || errors.Is(context.Cause(ctx), context.DeadlineExceeded)
	}
	return ue.Status >= 500 && ue.Status != http.StatusNotImplemented
}
