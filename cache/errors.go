package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
)

// regError is an error the client sees as OCI error JSON with a status.
type regError struct {
	Status  int
	Code    transport.ErrorCode
	Message string
}

func (e *regError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

func newError(status int, code transport.ErrorCode, format string, a ...any) *regError {
	return &regError{Status: status, Code: code, Message: fmt.Sprintf(format, a...)}
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

// toRegError is the single mapping from an error to what the client sees.
// notFound is the code to use when the thing asked for does not exist.
func toRegError(err error, notFound transport.ErrorCode) *regError {
	var re *regError
	if errors.As(err, &re) {
		return re
	}
	if errors.Is(err, store.ErrNotFound) {
		return newError(http.StatusNotFound, notFound, "not found")
	}
	if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) {
		return newError(http.StatusBadGateway, transport.UnknownErrorCode, "upstream sent content that does not match its digest")
	}
	var ue upstreamError
	if errors.As(err, &ue) {
		switch {
		case ue.NotFound():
			return newError(http.StatusNotFound, notFound, "not found upstream")
		case ue.BadContent():
			return newError(http.StatusBadGateway, transport.UnknownErrorCode, "upstream sent content that does not match its digest")
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
