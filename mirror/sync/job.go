// Package sync is the mirror engine: jobs that bring chosen repositories of
// an upstream onto the box ahead of time. A job lists the tags, keeps those
// its filters select, asks upstream for each one's digest with a HEAD and
// downloads only what changed, and of that only what the store lacks. Each
// image is written into a store session (.sync/<UUID>) and promoted in one
// commit once every manifest and blob of it is there and verified, so a
// client never sees a mirrored tag whose content is missing, and a moved
// tag keeps its old image until the new one is complete.
package sync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	stdsync "sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/outpost-oci/outpost/mirror"
	"github.com/outpost-oci/outpost/store"
)

// Window is a daily span of time in which a job transfers (configs.Window).
type Window interface {
	Contains(t time.Time) bool
	Next(t time.Time) time.Time
}

// Options configure one job.
type Options struct {
	Name     string           // the mirror's name, in logs, metrics and session origins
	Upstream *mirror.Upstream // where the content comes from
	// Registry is the store's name for the upstream ("docker.io" for any
	// of Docker Hub's aliases): content lands under Registry/<repo>.
	Registry     string
	Store        *store.Store
	Repositories []string   // exact names and patterns ("org/**", matched against the catalog)
	Tags         *TagFilter // nil: every tag
	Platforms    []v1.Platform
	Referrers    bool   // bring signatures and attestations along
	Bandwidth    int64  // bytes per second for blob downloads; 0: no cap
	Window       Window // nil: transfers at any time
	Parallel     int    // blobs downloaded at once; default 3
	// Slots bounds blob downloads from this upstream across every job that
	// shares it (a buffered channel: one send per download); nil: no bound
	// beyond Parallel.
	Slots    chan struct{}
	Progress Progress // nil: nobody watches
	// RateLimitMin is the pull allowance (RateLimit-Remaining, as Docker
	// Hub sends it) kept in reserve: at or below it the job pauses for
	// RateLimitRetry (default 15m) and looks again, as regsync's
	// ratelimit.min does. 0: only when none remain; negative: never pause.
	RateLimitMin   int64
	RateLimitRetry time.Duration
	// MaxWait caps how long a Retry-After is honoured before giving up on
	// the request; default 15m.
	MaxWait time.Duration
	Now     func() time.Time
	Logger  *slog.Logger
	Metrics *Metrics // nil: not counted
}

// Progress hears of a job's blob downloads (`outpost sync` draws bars
// with it on a terminal and writes log lines elsewhere). Calls come from
// several goroutines at once.
type Progress interface {
	// BlobStarted announces a download of size bytes (-1: unknown) whose
	// first from bytes were already there (a resumed part).
	BlobStarted(repo string, d v1.Hash, size, from int64) BlobProgress
}

// BlobProgress follows one blob download.
type BlobProgress interface {
	Add(n int)      // n more bytes arrived
	Done(err error) // the download ended (err nil: complete and verified)
}

// Job is one configured mirror. Run may be called again and again; runs of
// one job do not overlap.
type Job struct {
	opts  Options
	log   *slog.Logger
	gate  *gate // the scheduled runs': bandwidth cap and window
	asked *gate // runs an operator asked for: the cap only
	runMu stdsync.Mutex
}

// NewJob checks opts and returns the job.
func NewJob(opts Options) (*Job, error) {
	if opts.Name == "" || opts.Upstream == nil || opts.Store == nil || opts.Registry == "" {
		return nil, errors.New("mirror/sync: a job needs a name, an upstream, a registry name and a store")
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 3
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RateLimitRetry <= 0 {
		opts.RateLimitRetry = 15 * time.Minute
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 15 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	j := &Job{opts: opts, log: opts.Logger.With("mirror", opts.Name)}
	j.gate = newGate(opts.Bandwidth, opts.Window, opts.Now)
	j.asked = j.gate.withoutWindow()
	return j, nil
}

// Name is the mirror's name.
func (j *Job) Name() string { return j.opts.Name }

// Report is what one run did.
type Report struct {
	Mirror    string    `json:"mirror"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Images    int       `json:"images"`            // tags promoted: new, moved or completed
	Unchanged int       `json:"unchanged"`         // tags already up to date
	Manifests int       `json:"manifests"`         // manifests downloaded
	Blobs     int       `json:"blobs"`             // blobs downloaded
	Bytes     int64     `json:"bytes"`             // bytes downloaded (manifests and blobs)
	Failed    []string  `json:"failed,omitempty"`  // "repo:tag: why", one per image that failed
	DryRun    bool      `json:"dryRun,omitempty"`  // nothing was fetched but lists and HEADs
	Planned   []Planned `json:"planned,omitempty"` // in a dry run: what would be fetched
}

// Planned is an image a dry run would fetch.
type Planned struct {
	Repo   string  `json:"repo"`
	Tag    string  `json:"tag"`
	Digest v1.Hash `json:"digest"`
	Blobs  int     `json:"blobs"` // blobs (or, for a manifest not stored, 1 for the manifest) the store lacks
	Bytes  int64   `json:"bytes"` // their size, where the stored manifests tell it
}

// Err sums up the failures of a run, nil if there were none.
func (r *Report) Err() error {
	if len(r.Failed) == 0 {
		return nil
	}
	return fmt.Errorf("%d image(s) failed: %s", len(r.Failed), strings.Join(r.Failed, "; "))
}

// Run syncs every selected tag once, inside the daily window (it waits for
// the window to open, and pauses transfers while it is closed). A failure
// of one image is recorded in the report and does not stop the others; the
// error is for a run that could not start (no tag list, no catalog).
func (j *Job) Run(ctx context.Context) (*Report, error) {
	return j.run(ctx, false, j.gate)
}

// RunNow is Run at once, whatever the window says: an operator asked for
// it (`outpost sync`). The bandwidth cap still holds.
func (j *Job) RunNow(ctx context.Context) (*Report, error) {
	return j.run(ctx, false, j.asked)
}

// DryRun lists what Run would fetch, fetching only tag lists and HEADs.
func (j *Job) DryRun(ctx context.Context) (*Report, error) {
	return j.run(ctx, true, j.asked)
}

// pass is one run's state.
type pass struct {
	j    *Job
	ctx  context.Context
	gate *gate // with or without the window
	rep  *Report

	mu        stdsync.Mutex     // leftovers, from parallel blob downloads
	leftovers map[string]string // origin → id: interrupted sessions not claimed yet
	selected  map[string]bool   // registry/repo:tag this run selected
	synced    map[string]bool   // … and brought up to date
	complete  bool              // every repository's full tag list was read
}

func (j *Job) run(ctx context.Context, dry bool, g *gate) (*Report, error) {
	if !dry { // a dry run writes nothing: it may overlap a run
		j.runMu.Lock()
		defer j.runMu.Unlock()
	}
	p := &pass{j: j, ctx: ctx, gate: g, rep: &Report{Mirror: j.opts.Name, Started: j.opts.Now(), DryRun: dry},
		selected: map[string]bool{}, synced: map[string]bool{}, complete: true}
	finish := func(err error) (*Report, error) {
		p.rep.Finished = j.opts.Now()
		j.opts.Metrics.run(j.opts.Name, p.rep, err)
		j.opts.Metrics.finished(j.opts.Name, p.rep)
		return p.rep, err
	}
	if g.window != nil && !g.window.Contains(j.opts.Now()) {
		j.log.Info("waiting for the mirror's window", "opens", g.window.Next(j.opts.Now()).Format(time.DateTime))
	}
	if err := g.waitWindow(ctx); err != nil {
		return finish(err)
	}
	repos, err := j.repositories(ctx)
	if err != nil {
		return finish(err)
	}
	p.leftovers = j.interrupted()
	for _, repo := range repos {
		if err := p.syncRepo(repo); err != nil {
			if ctx.Err() != nil {
				return finish(ctx.Err())
			}
			p.complete = false
			p.rep.Failed = append(p.rep.Failed, fmt.Sprintf("%s: %v", repo, err))
			j.log.Warn("repository not synced", "repo", repo, "err", err)
		}
	}
	if !dry {
		p.abortLeftovers()
		if p.complete {
			j.unpinUnselected(p.selected)
		}
	}
	return finish(nil)
}

// repositories expands the configured entries, asking the catalog only
// when a pattern needs it.
func (j *Job) repositories(ctx context.Context) ([]string, error) {
	var catalog []string
	for _, e := range j.opts.Repositories {
		if isGlob(e) {
			var err error
			if catalog, err = j.opts.Upstream.Catalog(ctx); err != nil {
				return nil, fmt.Errorf("listing the repositories of %s for %q (list them by name if it has no catalog): %w", j.opts.Upstream.Name(), e, err)
			}
			break
		}
	}
	repos := matchRepositories(j.opts.Repositories, catalog)
	for i, r := range repos {
		if j.opts.Registry == "docker.io" && !strings.Contains(r, "/") {
			repos[i] = "library/" + r // what Docker Hub and the cache call it
		}
	}
	return repos, nil
}

// syncRepo syncs the selected tags of one repository, and with them the
// cosign tags (sha256-<hex>.sig/.att/.sbom) of what they point at when
// referrers are wanted.
func (p *pass) syncRepo(repo string) error {
	j := p.j
	var all []string
	complete := true
	err := j.patiently(p.ctx, "tags", func() (err error) {
		all, complete, err = j.opts.Upstream.TagList(p.ctx, repo)
		return err
	})
	if err != nil {
		return err
	}
	if !complete {
		p.complete = false // a cut list must not unpin what it did not show
		j.log.Warn("the upstream's tag list is longer than Outpost reads; the rest is left out", "repo", repo, "tags", len(all))
	}
	all = slices.DeleteFunc(all, func(tag string) bool {
		if validTag.MatchString(tag) {
			return false
		}
		j.log.Warn("the upstream lists a tag that is not a valid OCI tag; left out", "repo", repo, "tag", tag)
		return true
	})
	tags := all
	if j.opts.Tags != nil {
		tags = j.opts.Tags.Select(all)
	}
	digests := map[string]bool{}
	key := j.opts.Registry + "/" + repo
	sync := func(tag string) (v1.Hash, error) {
		p.selected[key+":"+tag] = true
		d, err := p.syncTag(repo, tag)
		if err != nil {
			if p.ctx.Err() == nil {
				p.rep.Failed = append(p.rep.Failed, fmt.Sprintf("%s:%s: %v", repo, tag, err))
				j.log.Warn("image not synced", "repo", repo, "tag", tag, "err", err)
			}
			return d, err
		}
		p.synced[key+":"+tag] = true
		return d, nil
	}
	for _, tag := range tags {
		d, err := sync(tag)
		if p.ctx.Err() != nil {
			return p.ctx.Err()
		}
		if err == nil {
			digests[d.String()] = true
		}
	}
	if !j.opts.Referrers {
		return nil
	}
	for _, tag := range all {
		base, _, ok := strings.Cut(tag, ".")
		if !ok || !isSigTag(tag) || !digests[strings.Replace(base, "-", ":", 1)] {
			continue
		}
		sync(tag)
		if p.ctx.Err() != nil {
			return p.ctx.Err()
		}
	}
	return nil
}

// validTag is the distribution spec's tag grammar.
var validTag = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// isSigTag reports whether tag is one of cosign's: sha256-<hex>.sig, .att
// or .sbom.
func isSigTag(tag string) bool {
	base, suffix, ok := strings.Cut(tag, ".")
	if !ok || (suffix != "sig" && suffix != "att" && suffix != "sbom") {
		return false
	}
	alg, hex, ok := strings.Cut(base, "-")
	return ok && (alg == "sha256" && len(hex) == 64 || alg == "sha512" && len(hex) == 128)
}

// syncTag brings repo:tag up to date and returns the digest it points at.
func (p *pass) syncTag(repo, tag string) (v1.Hash, error) {
	j, ctx, rep := p.j, p.ctx, p.rep
	key := j.opts.Registry + "/" + repo
	// A run the window closed on goes no further until it opens again: no
	// HEADs or manifests either (blob bodies pause in their reads).
	if err := p.gate.waitWindow(ctx); err != nil {
		return v1.Hash{}, err
	}
	var head v1.Descriptor
	err := j.patiently(ctx, "head", func() (err error) {
		head, err = j.opts.Upstream.Head(ctx, repo, tag)
		return err
	})
	if err != nil {
		return v1.Hash{}, err
	}
	d := head.Digest
	st := j.opts.Store
	if d.Hex != "" {
		if cur, err := st.Tag(key, tag); err == nil && cur.Digest == d {
			if missing, _, err := j.missing(d); err == nil && missing == 0 && (!j.opts.Referrers || rep.DryRun || j.referrersStored(ctx, repo, d)) {
				rep.Unchanged++
				if !rep.DryRun {
					st.ConfirmTag(key, tag, d, j.opts.Now())
					if err := st.EnsurePin(j.owner(), key, tag, d); err != nil {
						return d, err
					}
				}
				return d, nil
			}
		}
	}
	if rep.DryRun {
		pl := Planned{Repo: key, Tag: tag, Digest: d}
		pl.Blobs, pl.Bytes, _ = j.missing(d)
		rep.Planned = append(rep.Planned, pl)
		return d, nil
	}
	// The image's manifests and tag are staged in a session of their own and
	// committed together once every blob is stored; the blobs are published
	// one by one as they are verified (see image.blob), so nobody ever waits
	// on an image that waits on them.
	origin := j.origin(key, tag, "")
	if id, ok := p.claim(origin); ok {
		// Staged manifests are not resumed (they are small and fetched
		// again or read from the store): an interrupted one just goes.
		if old, err := st.Resume(id); err == nil {
			old.Abort()
		}
	}
	sess, err := st.Begin(store.KindSync, origin)
	if err != nil {
		return v1.Hash{}, err
	}
	defer sess.Abort() // a no-op after Commit
	img := &image{pass: p, sess: sess, repo: repo, key: key, tag: tag}
	d, err = img.sync(tag, d)
	if err != nil {
		return v1.Hash{}, err
	}
	sess.Tag(key, tag, d)
	sess.Pin(j.owner(), key, tag, d)
	if err := sess.Commit(); err != nil {
		return v1.Hash{}, fmt.Errorf("promoting: %w", err)
	}
	if img.downloaded == 0 {
		rep.Unchanged++ // complete already; only referrers were looked at
		return d, nil
	}
	rep.Images++
	j.opts.Metrics.image(j.opts.Name)
	j.log.Info("image synced", "repo", key, "tag", tag, "digest", d)
	return d, nil
}

// origin names a session of this job: "<mirror> <repo>:<tag>" for an
// image's manifests, with " <digest>" for one of its blob downloads.
func (j *Job) origin(key, tag, blob string) string {
	o := j.opts.Name + " " + key + ":" + tag
	if blob != "" {
		o += " " + blob
	}
	return o
}

// claim takes the interrupted session begun with origin, if there is one.
func (p *pass) claim(origin string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.leftovers[origin]
	delete(p.leftovers, origin)
	return id, ok
}

// owner names the job's pins.
func (j *Job) owner() string { return "mirror:" + j.opts.Name }

// unpinUnselected drops the job's pins of tags it no longer selects (a
// changed filter, a tag gone upstream): their images become ordinary cache
// content.
func (j *Job) unpinUnselected(selected map[string]bool) {
	pins, err := j.opts.Store.Pins(j.owner())
	if err != nil {
		j.log.Warn("cannot list the mirror's pins", "err", err)
		return
	}
	var drop []store.Pin
	for _, p := range pins {
		if !selected[p.Repo+":"+p.Tag] {
			drop = append(drop, p)
		}
	}
	if err := j.opts.Store.Unpin(drop); err != nil {
		j.log.Warn("cannot drop the mirror's old pins", "err", err)
	} else if len(drop) > 0 {
		j.log.Info("unpinned tags the mirror no longer selects", "tags", len(drop))
	}
}

// DropPinsExcept removes the pins of mirror jobs not among names (a
// mirror taken out of the config), at serve start and on reload.
func DropPinsExcept(st *store.Store, names []string) (int, error) {
	pins, err := st.Pins("")
	if err != nil {
		return 0, err
	}
	keep := map[string]bool{}
	for _, n := range names {
		keep["mirror:"+n] = true
	}
	var drop []store.Pin
	for _, p := range pins {
		if strings.HasPrefix(p.Owner, "mirror:") && !keep[p.Owner] {
			drop = append(drop, p)
		}
	}
	return len(drop), st.Unpin(drop)
}

// AbortForeignSessions removes interrupted sync sessions of mirrors not
// among names (taken out of the config or renamed): no job will resume
// them, and on a small disk their parts matter.
func AbortForeignSessions(st *store.Store, names []string) (int, error) {
	infos, err := st.Interrupted(store.KindSync)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, in := range infos {
		mirror, _, _ := strings.Cut(in.Origin, " ")
		if slices.Contains(names, mirror) {
			continue
		}
		if sess, err := st.Resume(in.ID); err == nil {
			sess.Abort()
			n++
		}
	}
	return n, nil
}

// missing counts the blobs (and their bytes) of stored manifest d and its
// wanted children that the store lacks; a manifest that is not stored
// counts as one missing item of unknown size.
func (j *Job) missing(d v1.Hash) (n int, size int64, err error) {
	st := j.opts.Store
	if !st.HasManifest(d) {
		return 1, 0, nil
	}
	m, err := st.PeekManifest(d)
	if err != nil {
		return 1, 0, err
	}
	children, blobs, err := parse(m.Bytes, m.MediaType)
	if err != nil {
		return 1, 0, err
	}
	for _, c := range children {
		if wantPlatform(j.opts.Platforms, c.Platform) {
			cn, cs, _ := j.missing(c.Digest)
			n, size = n+cn, size+cs
		}
	}
	for _, bl := range blobs {
		if !st.HasBlob(bl.Digest) {
			n, size = n+1, size+bl.Size
		}
	}
	return n, size, nil
}

// referrersStored reports whether every referrer upstream lists for d is
// stored and complete, so an unchanged tag costs no writes.
func (j *Job) referrersStored(ctx context.Context, repo string, d v1.Hash) bool {
	descs, err := j.opts.Upstream.Referrers(ctx, repo, d)
	if err != nil {
		return false
	}
	for _, desc := range descs {
		if !wantedReferrer(desc) {
			continue // never fetched (image.referrers): not a reason to look again
		}
		if n, _, err := j.missing(desc.Digest); err != nil || n > 0 {
			return false
		}
	}
	return true
}

// parse splits a manifest into the child manifests of an index and the
// blobs of an image (config and distributable layers).
func parse(b []byte, mediaType string) (children, blobs []v1.Descriptor, err error) {
	mt := types.MediaType(mediaType)
	if mt.IsIndex() {
		var idx v1.IndexManifest
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, nil, err
		}
		return idx.Manifests, nil, nil
	}
	var m v1.Manifest
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&m); err != nil {
		return nil, nil, err
	}
	blobs = append(blobs, m.Config)
	for _, l := range m.Layers {
		if len(l.URLs) > 0 && !l.MediaType.IsDistributable() {
			continue // a foreign layer: fetched from its URLs, not the registry
		}
		blobs = append(blobs, l)
	}
	return nil, blobs, nil
}

// interrupted maps the origins of this job's sessions left on disk by an
// interruption to their ids: the newest per origin; older ones of the
// same origin are aborted (nothing would ever claim them).
func (j *Job) interrupted() map[string]string {
	infos, err := j.opts.Store.Interrupted(store.KindSync)
	if err != nil {
		j.log.Warn("cannot list interrupted syncs", "err", err)
		return nil
	}
	out := map[string]string{}
	for _, in := range infos { // oldest first
		if !strings.HasPrefix(in.Origin, j.opts.Name+" ") {
			continue
		}
		if older, dup := out[in.Origin]; dup {
			if sess, err := j.opts.Store.Resume(older); err == nil {
				sess.Abort()
			}
		}
		out[in.Origin] = in.ID
	}
	return out
}

// abortLeftovers removes this job's interrupted sessions that the run did
// not resume and no later run will: those of tags it synced (someone else
// brought the blob) or, after a run that saw every tag list, tags it no
// longer selects. The rest (a tag whose HEAD failed this time) stay for the
// next run, within the store's day.
func (p *pass) abortLeftovers() {
	for origin, id := range p.leftovers {
		fields := strings.Fields(origin)
		if len(fields) < 2 {
			continue
		}
		ref := fields[1]
		if !p.synced[ref] && (p.selected[ref] || !p.complete) {
			continue
		}
		if sess, err := p.j.opts.Store.Resume(id); err == nil {
			sess.Abort()
			p.j.log.Info("removed an interrupted sync that is not wanted any more", "session", id, "for", origin)
		}
	}
}
