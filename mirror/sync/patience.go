package sync

import (
	"context"
	"errors"
	"time"

	"github.com/outpost-oci/outpost/mirror"
)

// A job is background work: where upstream asks it to slow down, it waits
// rather than failing the image, within bounds.

// maxAttempts bounds how often one request is retried after a 429.
const maxAttempts = 4

// patiently runs op, and again after the wait upstream asks for when it
// answers 429 (or a 503 with Retry-After): at most MaxWait each time,
// doubling from 30 s when upstream names no time.
func (j *Job) patiently(ctx context.Context, what string, op func() error) error {
	for attempt := 1; ; attempt++ {
		err := op()
		var ue *mirror.Error
		if err == nil || attempt >= maxAttempts || !errors.As(err, &ue) ||
			!(ue.TooManyRequests() || ue.RetryAfter > 0 && ue.Unavailable()) {
			return err
		}
		wait := ue.RetryAfter
		if wait <= 0 {
			wait = 30 * time.Second << (attempt - 1)
		}
		wait = min(wait, j.opts.MaxWait)
		j.log.Warn("upstream asks to slow down; waiting", "request", what, "wait", wait, "attempt", attempt)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// waitRateLimit pauses while upstream's announced pull allowance is at or
// below the reserve, looking again every RateLimitRetry with a HEAD of
// repo:ref (HEADs do not count against Docker Hub's limit). After
// maxAttempts pauses it goes on (an allowance that HEADs never refresh
// must not hold the job for ever; a 429 is then waited out).
func (j *Job) waitRateLimit(ctx context.Context, repo, ref string) error {
	if j.opts.RateLimitMin < 0 {
		return nil
	}
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		n, ok := j.opts.Upstream.RateLimitRemaining()
		if !ok || n > j.opts.RateLimitMin {
			return nil
		}
		j.log.Warn("pausing: the upstream's pull allowance is nearly used up", "remaining", n,
			"reserve", j.opts.RateLimitMin, "again in", j.opts.RateLimitRetry)
		if err := sleep(ctx, j.opts.RateLimitRetry); err != nil {
			return err
		}
		j.opts.Upstream.Head(ctx, repo, ref) // refreshes RateLimit-Remaining
	}
	j.log.Warn("going on although the announced pull allowance did not come back", "repo", repo)
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
