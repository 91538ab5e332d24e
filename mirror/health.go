package mirror

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The health model. A slow uplink is not a dead one: only connection-level
// failures (refused, reset, no answer within a request's own budget, 5xx)
// count, and the upstream is marked down only after DownAfter of them
// within DownWindow with no success in between. While it is down, cached
// content is served without asking it, and one cold request at a time
// still tries it (half-open); any answer marks it up at once, as does the
// background probe, which has its own, longer timeout.
//
// URLs have a health of their own: a URL that failed is passed over for
// Failback (the next URL is tried first), then tried first again; the probe
// also watches it and restores it as soon as it answers. So a site that
// failed over from its regional Outpost to the internet returns to the
// regional one instead of using the internet for ever.
type health struct {
	mu       sync.Mutex
	failures []time.Time // recent failures, oldest first, at most DownAfter
	down     atomic.Bool
	trial    atomic.Bool // a half-open attempt is in flight
	probing  bool        // the probe goroutine runs (under mu)
}

// Down reports whether the upstream is marked down.
func (u *Upstream) Down() bool { return u.health.down.Load() }

// admit decides whether a request may go upstream. While the upstream is
// down only one request at a time may (the half-open trial); release must
// be called when it has its answer.
func (u *Upstream) admit() (trial bool, ok bool) {
	if !u.health.down.Load() {
		return false, true
	}
	if u.health.trial.CompareAndSwap(false, true) {
		return true, true
	}
	return false, false
}

func (u *Upstream) endTrial() { u.health.trial.Store(false) }

// recordAnswer notes that some URL answered: the upstream is reachable.
func (u *Upstream) recordAnswer(url string) {
	h := &u.health
	h.mu.Lock()
	h.failures = h.failures[:0]
	h.mu.Unlock()
	u.markUp(url)
}

// recordFailure notes a connection-level failure of the whole upstream
// (every URL failed) and marks it down when there were enough recently.
func (u *Upstream) recordFailure(err error) {
	h := &u.health
	now := time.Now()
	h.mu.Lock()
	keep := h.failures[:0]
	for _, t := range h.failures {
		if now.Sub(t) < u.opts.DownWindow {
			keep = append(keep, t)
		}
	}
	h.failures = append(keep, now)
	if len(h.failures) > u.opts.DownAfter {
		h.failures = h.failures[len(h.failures)-u.opts.DownAfter:]
	}
	markDown := len(h.failures) >= u.opts.DownAfter && !h.down.Load()
	if markDown {
		h.down.Store(true)
	}
	h.mu.Unlock()
	if markDown {
		u.opts.Metrics.up.WithLabelValues(u.opts.Name).Set(0)
		u.opts.Logger.Warn("upstream marked down; serving cached content without asking it",
			"upstream", u.opts.Name, "failures", u.opts.DownAfter, "within", u.opts.DownWindow.String(), "err", err)
		u.startProbe()
	}
}

func (u *Upstream) markUp(url string) {
	if u.health.down.CompareAndSwap(true, false) {
		u.opts.Metrics.up.WithLabelValues(u.opts.Name).Set(1)
		attrs := []any{"upstream", u.opts.Name}
		if url != "" {
			attrs = append(attrs, "url", url)
		}
		u.opts.Logger.Info("upstream is back", attrs...)
	}
}

// endpointFailed passes URL i over for Failback, if there is another one.
// A URL that could not be reached is also watched by the probe, which
// restores it as soon as it answers; one that answered with an error (a
// 5xx) waits out Failback, since answering /v2/ proves nothing about it.
func (u *Upstream) endpointFailed(i int, unreached bool) {
	if len(u.endpoints) < 2 {
		return
	}
	ep := &u.endpoints[i]
	if ep.coolUntil.Swap(time.Now().Add(u.opts.Failback).UnixNano()) == 0 {
		u.opts.Logger.Warn("upstream URL failing; using the next one", "upstream", u.opts.Name, "url", ep.base.String(),
			"retryAfter", u.opts.Failback.String())
	}
	if unreached {
		ep.unreached.Store(true)
		u.startProbe()
	}
}

func (u *Upstream) endpointOK(i int) {
	ep := &u.endpoints[i]
	ep.unreached.Store(false)
	if ep.coolUntil.Swap(0) != 0 {
		u.opts.Logger.Info("upstream URL answers again", "upstream", u.opts.Name, "url", ep.base.String())
	}
}

// order is the sequence in which URLs are tried: those in good standing in
// configured order, then those passed over.
func (u *Upstream) order(buf []int) []int {
	now := time.Now().UnixNano()
	buf = buf[:0]
	for i := range u.endpoints {
		if u.endpoints[i].coolUntil.Load() <= now {
			buf = append(buf, i)
		}
	}
	for i := range u.endpoints {
		if u.endpoints[i].coolUntil.Load() > now {
			buf = append(buf, i)
		}
	}
	return buf
}

// needsProbe says whether anything is unhealthy: the upstream is down or
// some URL has not been seen answering since it failed.
func (u *Upstream) needsProbe() bool {
	if u.health.down.Load() {
		return true
	}
	for i := range u.endpoints {
		if u.endpoints[i].unreached.Load() {
			return true
		}
	}
	return false
}

func (u *Upstream) startProbe() {
	h := &u.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.probing {
		return
	}
	select {
	case <-u.stop:
		return
	default:
	}
	h.probing = true
	u.probing.Add(1)
	go u.probeLoop()
}

// probeLoop looks at what is unhealthy every ProbeInterval until all is well.
func (u *Upstream) probeLoop() {
	defer u.probing.Done()
	t := time.NewTicker(u.opts.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-t.C:
		}
		down := u.health.down.Load()
		for i := range u.endpoints {
			if !down && !u.endpoints[i].unreached.Load() {
				continue
			}
			if u.probeOne(i) {
				u.endpointOK(i)
				u.recordAnswer(u.endpoints[i].base.String())
			}
		}
		u.health.mu.Lock()
		if !u.needsProbe() {
			u.health.probing = false
			u.health.mu.Unlock()
			return
		}
		u.health.mu.Unlock()
	}
}

// probeOne asks URL i for /v2/ within ProbeTimeout. Any answer below 500
// (401 included) means it is there.
func (u *Upstream) probeOne(i int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), u.opts.ProbeTimeout)
	defer cancel()
	go func() { // Close stops a probe in flight
		select {
		case <-u.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	ep := &u.endpoints[i]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.base.Scheme+"://"+ep.base.Host+"/v2/", nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", u.opts.UserAgent)
	resp, err := u.probeClient.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp.StatusCode < 500
}
