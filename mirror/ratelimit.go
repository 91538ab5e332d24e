package mirror

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// rateLimit remembers the pull allowance an upstream last announced in
// RateLimit-Remaining (Docker Hub: "76;w=21600", 76 pulls left in a
// window of 6 hours), so a mirror job can pause before it is cut off.
type rateLimit struct {
	remaining atomic.Int64 // -1: never announced
}

func (r *rateLimit) note(h http.Header) {
	v := h.Get("RateLimit-Remaining")
	if v == "" {
		return
	}
	n, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(v, ";", 2)[0]), 10, 64)
	if err == nil && n >= 0 {
		r.remaining.Store(n)
	}
}

// RateLimitRemaining returns the pulls upstream last said remain, and
// whether it ever said.
func (u *Upstream) RateLimitRemaining() (int64, bool) {
	n := u.limit.remaining.Load()
	return n, n >= 0
}

// retryAfterOf reads a response's Retry-After (seconds or an HTTP date).
func retryAfterOf(resp *http.Response) time.Duration {
	d, ok := retryAfter(resp.Header.Get("Retry-After"))
	if !ok || d < 0 {
		return 0
	}
	return d
}
