package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
)

// regError is an error the client sees as OCI error JSON with a status.
type regError struct {
	Status     int
	Code       transport.ErrorCode
	Message    string
	RetryAfter int   // seconds, for 429 and 503; 0: no header
	rangeSize  int64 // for 416: the blob's size, for Content-Range
}

func (e *regError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

func newError(status int, code transport.ErrorCode, format string, a ...any) *regError {
	return &regError{Status: status, Code: code, Message: fmt.Sprintf(format, a...), rangeSize: -1}
}

// upstreamError is how the cache reads errors from its upstreams without
// importing them (mirror.Error implements it).
type upstreamError interface {
	NotFound() bool
	Unavailable() bool
	TooManyRequests() bool
	BadContent() bool
	Denied() bool
}

// errBusy means every download slot is taken and none came free in time.
var errBusy = errors.New("too many downloads from upstream in progress")

// toRegError is the single mapping from an error to what the client sees.
// notFound is the code to use when the thing asked for does not exist.
func toRegError(err error, notFound transport.ErrorCode) *regError {
	var re *regError
	if errors.As(err, &re) {
		return re
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return newError(http.StatusNotFound, notFound, "not found")
	case errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch):
		return newError(http.StatusBadGateway, transport.UnknownErrorCode, "upstream sent content that does not match its digest")
	case errors.Is(err, store.ErrNoSpace):
		e := newError(http.StatusServiceUnavailable, transport.UnavailableErrorCode,
			"this Outpost's disk is full: new content cannot be cached now (cached content is still served)")
		e.RetryAfter = 60
		return e
	case errors.Is(err, context.Canceled):
		return newError(http.StatusServiceUnavailable, transport.UnavailableErrorCode, "shutting down")
	case errors.Is(err, errAbandoned) || errors.Is(err, store.ErrAborted):
		e := newError(http.StatusServiceUnavailable, transport.UnavailableErrorCode, "the download was given up; try again")
		e.RetryAfter = 1
		return e
	case errors.Is(err, errBusy):
		e := newError(http.StatusTooManyRequests, transport.TooManyRequestsErrorCode,
			"this Outpost is downloading as much as it may at once; try again shortly")
		e.RetryAfter = 5
		return e
	}
	var ue upstreamError
	if errors.As(err, &ue) {
		switch {
		case ue.NotFound():
			return newError(http.StatusNotFound, notFound, "not found upstream")
		case ue.BadContent():
			return newError(http.StatusBadGateway, transport.UnknownErrorCode, "upstream sent something Outpost does not store: %s", clip(err.Error(), 300))
		case ue.TooManyRequests():
			return newError(http.StatusTooManyRequests, transport.TooManyRequestsErrorCode, "upstream rate limit reached")
		case ue.Denied():
			return newError(http.StatusNotFound, transport.NameUnknownErrorCode, "upstream denied access: the repository does not exist or needs credentials")
		case ue.Unavailable():
			return notCachedOffline(notFound, "upstream unreachable")
		}
		return newError(http.StatusBadGateway, transport.UnknownErrorCode, "upstream error")
	}
	return newError(http.StatusInternalServerError, transport.UnknownErrorCode, "internal error")
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    transport.ErrorCode `json:"code"`
	Message string              `json:"message"`
}

func (e *regError) body() []byte {
	b, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: e.Code, Message: e.Message}}})
	return b
}

// notCachedOffline answers for content that is neither cached nor reachable
// upstream. For the client it does not exist right now: the spec's 404 and
// *_UNKNOWN code (which the conformance suite checks, and on which
// containerd moves to its next host), with the reason in the message.
func notCachedOffline(code transport.ErrorCode, format string, a ...any) *regError {
	return newError(http.StatusNotFound, code, "not in the cache, and "+format+"; it can be pulled once the uplink is back", a...)
}

func isNotFound(err error) bool {
	var ue upstreamError
	return errors.As(err, &ue) && ue.NotFound()
}

func isUnavailable(err error) bool {
	var ue upstreamError
	return errors.As(err, &ue) && ue.Unavailable()
}

// repoSpecific reports whether an upstream failure belongs to the
// repository that asked (it has no such thing, or may not see it), so that
// a request from another repository deserves its own attempt.
func repoSpecific(err error) bool {
	var ue upstreamError
	return errors.As(err, &ue) && (ue.NotFound() || ue.Denied())
}
