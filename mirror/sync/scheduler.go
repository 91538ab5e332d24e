package sync

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	stdsync "sync"
	"time"
)

// Schedule says when a job runs: every Interval plus up to Jitter at
// random (so that many boxes do not ask one upstream at the same moment).
type Schedule struct {
	Job      *Job
	Interval time.Duration
	Jitter   time.Duration
}

// Status is what the scheduler knows of one job, for the admin API.
type Status struct {
	Mirror  string    `json:"mirror"`
	Running bool      `json:"running"`
	Next    time.Time `json:"next"`
	Last    *Report   `json:"last,omitempty"`
	LastErr string    `json:"lastError,omitempty"`
}

// Scheduler runs jobs on their schedules inside `outpost serve`, one run
// of a job at a time, and on demand (RunNow).
type Scheduler struct {
	log   *slog.Logger
	first time.Duration // the longest wait before a job's first run

	mu      stdsync.Mutex
	jobs    map[string]*scheduled
	stopped chan struct{} // closed when Run returns
}

type scheduled struct {
	Schedule
	now     chan chan runResult // RunNow requests
	running bool
	next    time.Time
	last    *Report
	lastErr error
}

type runResult struct {
	rep *Report
	err error
}

var (
	// ErrUnknownMirror means RunNow was asked for a job that is not configured.
	ErrUnknownMirror = errors.New("no such mirror")
	// ErrStopped means the scheduler has stopped (a reload replaced it, or
	// Outpost is stopping).
	ErrStopped = errors.New("the mirror scheduler has stopped")
)

// NewScheduler returns a scheduler for the given jobs. Each one first runs
// within firstRun of Run's start (at a random point, 0: at once), then on
// its schedule.
func NewScheduler(schedules []Schedule, firstRun time.Duration, log *slog.Logger) *Scheduler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scheduler{log: log, first: firstRun, jobs: map[string]*scheduled{}, stopped: make(chan struct{})}
	for _, sc := range schedules {
		s.jobs[sc.Job.Name()] = &scheduled{Schedule: sc, now: make(chan chan runResult)}
	}
	return s
}

// Run runs the jobs until ctx ends; a run in progress is cancelled then
// (its staging stays, for the next run to resume).
func (s *Scheduler) Run(ctx context.Context) {
	defer close(s.stopped)
	var wg stdsync.WaitGroup
	for _, j := range s.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, j)
		}()
	}
	wg.Wait()
}

func (s *Scheduler) loop(ctx context.Context, j *scheduled) {
	wait := time.Duration(0)
	if s.first > 0 {
		wait = rand.N(s.first)
	}
	for {
		s.mu.Lock()
		j.next = time.Now().Add(wait)
		s.mu.Unlock()
		t := time.NewTimer(wait)
		var reply chan runResult
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case reply = <-j.now:
			t.Stop()
			if ctx.Err() != nil { // stopping: say so rather than run
				reply <- runResult{nil, ErrStopped}
				return
			}
		}
		rep, err := s.runOnce(ctx, j, reply != nil)
		if reply != nil {
			reply <- runResult{rep, err}
		}
		if ctx.Err() != nil {
			return
		}
		wait = j.Interval
		if j.Jitter > 0 {
			wait += rand.N(j.Jitter)
		}
	}
}

func (s *Scheduler) runOnce(ctx context.Context, j *scheduled, asked bool) (*Report, error) {
	s.mu.Lock()
	j.running = true
	s.mu.Unlock()
	log := s.log.With("mirror", j.Job.Name())
	log.Info("mirror run started", "asked", asked)
	run := j.Job.Run
	if asked {
		run = j.Job.RunNow // an operator asked: now, whatever the window
	}
	rep, err := run(ctx)
	s.mu.Lock()
	j.running, j.last, j.lastErr = false, rep, err
	s.mu.Unlock()
	switch {
	case err != nil && ctx.Err() != nil:
		log.Info("mirror run stopped; what it fetched is kept for the next run")
	case err != nil:
		log.Error("mirror run failed", "err", err)
	case rep.Err() != nil:
		log.Warn("mirror run finished with failures", "images", rep.Images, "unchanged", rep.Unchanged,
			"bytes", rep.Bytes, "failed", len(rep.Failed), "duration", rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	default:
		log.Info("mirror run finished", "images", rep.Images, "unchanged", rep.Unchanged, "blobs", rep.Blobs,
			"bytes", rep.Bytes, "duration", rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	}
	return rep, err
}

// RunNow runs a job at once, whatever its window (after the run in
// progress, if any), and returns its report. It returns ErrUnknownMirror for a name not
// configured.
func (s *Scheduler) RunNow(ctx context.Context, name string) (*Report, error) {
	s.mu.Lock()
	j := s.jobs[name]
	s.mu.Unlock()
	if j == nil {
		return nil, ErrUnknownMirror
	}
	reply := make(chan runResult, 1)
	select {
	case j.now <- reply:
	case <-s.stopped:
		return nil, ErrStopped
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-reply:
		return r.rep, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Names lists the configured jobs.
func (s *Scheduler) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.jobs))
	for n := range s.jobs {
		names = append(names, n)
	}
	return names
}

// Status reports every job's state and last run.
func (s *Scheduler) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.jobs))
	for name, j := range s.jobs {
		st := Status{Mirror: name, Running: j.running, Next: j.next, Last: j.last}
		if j.lastErr != nil {
			st.LastErr = j.lastErr.Error()
		}
		out = append(out, st)
	}
	return out
}

// Job returns the configured job of that name, or nil.
func (s *Scheduler) Job(name string) *Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[name]; j != nil {
		return j.Job
	}
	return nil
}
