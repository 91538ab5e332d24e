package sync

import (
	"context"
	"io"
	"time"

	"golang.org/x/time/rate"
)

// gate holds a job's transfers to its bandwidth cap and daily window: a
// body read through it waits for tokens, and outside the window it waits
// for the window to open again (a running job pauses, it is not cut).
type gate struct {
	lim    *rate.Limiter // nil: no cap
	burst  int
	window Window
	now    func() time.Time
}

func newGate(bytesPerSec int64, w Window, now func() time.Time) *gate {
	g := &gate{window: w, now: now}
	if bytesPerSec > 0 {
		// A tenth of a second of tokens: smooth, and a short transfer does
		// not start with a large free burst.
		g.burst = int(max(bytesPerSec/10, 1024))
		g.lim = rate.NewLimiter(rate.Limit(bytesPerSec), g.burst)
		g.lim.AllowN(now(), g.burst) // start empty
	}
	return g
}

// withoutWindow is g for runs an operator asked for: the same cap (one
// limiter, so the cap holds across runs), no window.
func (g *gate) withoutWindow() *gate {
	return &gate{lim: g.lim, burst: g.burst, now: g.now}
}

// waitWindowUnless is waitWindow that also returns as soon as bypass
// reports true (a pull joined the paused download).
func (g *gate) waitWindowUnless(ctx context.Context, bypass func() bool) error {
	if g.window == nil || bypass == nil {
		return g.waitWindow(ctx)
	}
	for !g.window.Contains(g.now()) && !bypass() {
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// waitWindow returns once the window is open (at once without a window).
// It looks at the clock at least every minute, so a clock set late (a Pi
// without a real-time clock getting NTP) is noticed.
func (g *gate) waitWindow(ctx context.Context) error {
	if g.window == nil {
		return nil
	}
	for {
		now := g.now()
		if g.window.Contains(now) {
			return nil
		}
		wait := min(g.window.Next(now).Sub(now), time.Minute)
		t := time.NewTimer(max(wait, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// reader gates r; while bypass reports true (someone else waits for the
// bytes), reads go through at once.
func (g *gate) reader(ctx context.Context, r io.Reader, bypass func() bool) io.Reader {
	if g.lim == nil && g.window == nil {
		return r
	}
	return &gatedReader{g: g, ctx: ctx, r: r, bypass: bypass}
}

type gatedReader struct {
	g      *gate
	ctx    context.Context
	r      io.Reader
	bypass func() bool
}

func (gr *gatedReader) Read(p []byte) (int, error) {
	if gr.bypass != nil && gr.bypass() {
		return gr.r.Read(p)
	}
	if err := gr.g.waitWindowUnless(gr.ctx, gr.bypass); err != nil {
		return 0, err
	}
	if gr.g.lim == nil {
		return gr.r.Read(p)
	}
	if len(p) > gr.g.burst {
		p = p[:gr.g.burst]
	}
	n, err := gr.r.Read(p)
	if n > 0 {
		if werr := gr.g.lim.WaitN(gr.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}
