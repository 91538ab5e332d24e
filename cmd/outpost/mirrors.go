package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/mirror"
	msync "github.com/outpost-oci/outpost/mirror/sync"
	"github.com/outpost-oci/outpost/store"
)

// mirrorFirstRun bounds the wait before each mirror's first run after a
// start or a reload (a random point within it, so jobs do not all start
// at once).
var mirrorFirstRun = 30 * time.Second

// buildJobs makes the configured mirrors' jobs on the given upstreams
// (ups[i] is cfg.Upstreams[i]).
func buildJobs(cfg *configs.Config, ups []*mirror.Upstream, st *store.Store, metrics *msync.Metrics, a *app, progress msync.Progress) ([]msync.Schedule, error) {
	var out []msync.Schedule
	slots := map[int]chan struct{}{} // per upstream, shared by its jobs
	for _, m := range cfg.Mirrors {
		i := slices.IndexFunc(cfg.Upstreams, func(u configs.Upstream) bool {
			return configs.CanonicalName(u.Name) == configs.CanonicalName(m.Upstream)
		})
		if i < 0 {
			return nil, fmt.Errorf("mirror %s: no upstream %s", m.Name, m.Upstream)
		}
		filter, err := msync.NewTagFilter(m.Tags.Include, m.Tags.Exclude, m.Tags.Semver, m.Tags.Latest)
		if err != nil {
			return nil, fmt.Errorf("mirror %s: %w", m.Name, err)
		}
		var platforms []v1.Platform
		for _, p := range m.Platforms {
			pl, err := v1.ParsePlatform(p)
			if err != nil {
				return nil, fmt.Errorf("mirror %s: %w", m.Name, err)
			}
			platforms = append(platforms, *pl)
		}
		if slots[i] == nil {
			n := cfg.Upstreams[i].MaxFills
			if n <= 0 {
				n = cfg.Fills.PerUpstream
			}
			if n <= 0 {
				n = 8 // the cache's default
			}
			slots[i] = make(chan struct{}, n)
		}
		var window msync.Window
		if !m.Window.IsZero() {
			window = m.Window
		}
		job, err := msync.NewJob(msync.Options{
			Name: m.Name, Upstream: ups[i], Registry: configs.CanonicalName(cfg.Upstreams[i].Name), Store: st,
			Repositories: m.Repositories, Tags: filter, Platforms: platforms, Referrers: m.Referrers,
			Bandwidth: int64(m.Bandwidth), Window: window, Slots: slots[i], Parallel: m.Parallel,
			RateLimitMin: int64(m.RateLimit.Min), RateLimitRetry: m.RateLimit.Retry.D(),
			Logger: a.log.With("component", "sync"), Metrics: metrics, Progress: progress,
		})
		if err != nil {
			return nil, err
		}
		out = append(out, msync.Schedule{Job: job, Interval: m.Interval.D(), Jitter: m.Jitter.D()})
	}
	return out, nil
}

// mirrors is the running scheduler and how to stop it.
type mirrors struct {
	sched  *msync.Scheduler
	cancel context.CancelFunc
	done   chan struct{}
}

func startMirrors(schedules []msync.Schedule, a *app) *mirrors {
	// Pins of mirrors taken out of the config go: that content becomes
	// ordinary cache content.
	names := make([]string, len(schedules))
	for i, s := range schedules {
		names[i] = s.Job.Name()
	}
	if n, err := msync.DropPinsExcept(a.store, names); err != nil {
		a.log.Warn("cannot drop the pins of removed mirrors", "err", err)
	} else if n > 0 {
		a.log.Info("unpinned the tags of mirrors no longer configured", "tags", n)
	}
	if n, err := msync.AbortForeignSessions(a.store, names); err != nil {
		a.log.Warn("cannot remove the staging of removed mirrors", "err", err)
	} else if n > 0 {
		a.log.Info("removed the interrupted syncs of mirrors no longer configured", "sessions", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &mirrors{sched: msync.NewScheduler(schedules, mirrorFirstRun, a.log.With("component", "sync")), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		m.sched.Run(ctx)
	}()
	return m
}

// stop cancels runs in progress (their staging stays for the next run)
// and waits for them.
func (m *mirrors) stop() {
	if m != nil {
		m.cancel()
		<-m.done
	}
}

// serveMirrorStatus answers GET /mirrors: every job's state and last run.
func (a *app) serveMirrorStatus(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	m := a.mirrors
	a.mu.Unlock()
	var status []msync.Status
	if m != nil {
		status = m.sched.Status()
	}
	slices.SortFunc(status, func(x, y msync.Status) int { return strings.Compare(x.Mirror, y.Mirror) })
	writeJSON(w, http.StatusOK, map[string]any{"mirrors": status})
}

// serveMirrorRun answers POST /mirrors/{name}/run: runs the job now (or,
// with ?dry-run=1, lists what it would fetch) and returns the report.
// `outpost sync` sends this when `outpost serve` holds the store.
func (a *app) serveMirrorRun(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	// The run ends with the request or with Outpost, whichever is first.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	a.mu.Lock()
	if a.runCtx != nil {
		defer context.AfterFunc(a.runCtx, cancel)()
	}
	a.mu.Unlock()
	var rep *msync.Report
	err := msync.ErrStopped
	for attempt := 0; attempt < 2 && errors.Is(err, msync.ErrStopped); attempt++ {
		if attempt > 0 {
			// A reload replaced the scheduler: it holds life until the new
			// one is in place.
			a.life.Lock()
			a.life.Unlock() // a barrier, not a critical section
		}
		a.mu.Lock()
		m := a.mirrors
		a.mu.Unlock()
		if m == nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the mirrors are not running (starting or stopping)"})
			return
		}
		if r.URL.Query().Get("dry-run") != "1" {
			rep, err = m.sched.RunNow(ctx, name) // ErrStopped: a reload replaced it, ask the new one
			continue
		}
		if job := m.sched.Job(name); job == nil {
			err = msync.ErrUnknownMirror
		} else {
			rep, err = job.DryRun(ctx)
		}
	}
	switch {
	case errors.Is(err, msync.ErrUnknownMirror):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no mirror named %q", name)})
	case err != nil:
		writeJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "report": rep})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"report": rep})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
