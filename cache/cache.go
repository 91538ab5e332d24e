// Package cache is Outpost's front end: the read side of the OCI
// distribution API on valyala/fasthttp, serving from the store and filling
// it from upstreams on a miss. fasthttp types stay inside this package.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/outpost-oci/outpost/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/singleflight"
)

// Upstream is what the cache needs from an upstream registry. repo is the
// repository at the upstream (library/alpine), ref a tag or digest. Every
// call applies the upstream's own transfer policy (deadlines, retries,
// failover, redirects) and returns only verified manifests.
type Upstream interface {
	Name() string
	// Down reports that the upstream is known unreachable: cached content is
	// then served without asking it.
	Down() bool
	// Manifest returns verified manifest bytes and their descriptor.
	Manifest(ctx context.Context, repo, ref string) ([]byte, v1.Descriptor, error)
	// Head returns what ref points at now.
	Head(ctx context.Context, repo, ref string) (v1.Descriptor, error)
	// BlobHead reports whether repo has blob d upstream, and its size.
	BlobHead(ctx context.Context, repo string, d v1.Hash) (int64, error)
	// Blob opens a blob from offset; size is the total size, -1 if unknown.
	// The body resumes itself when it breaks; the store verifies it.
	Blob(ctx context.Context, repo string, d v1.Hash, offset, size int64) (io.ReadCloser, int64, error)
}

// tagLister is an Upstream that lists tags.
type tagLister interface {
	Tags(ctx context.Context, repo string) ([]string, error)
}

// referrerLister is an Upstream that lists referrers.
type referrerLister interface {
	Referrers(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error)
}

// UpstreamOptions is one configured upstream.
type UpstreamOptions struct {
	Upstream Upstream
	TagTTL   time.Duration // how long a tag is served without asking upstream
	// RevalidateTimeout is how long a request for a stale tag waits for
	// upstream before the cached one is served (the revalidation goes on in
	// the background); default 2s.
	RevalidateTimeout time.Duration
	Default           bool // serves names without a registry host
	MaxFills          int  // concurrent downloads from this upstream; 0: FillLimits.PerUpstream
}

// FillLimits bound the downloads from upstreams.
type FillLimits struct {
	Max         int           // concurrent downloads in all; default 16
	PerUpstream int           // per upstream unless it says otherwise; default 8
	Queue       time.Duration // how long a request waits for a free slot before 429; default 10s
	// Abandon is how long a download nobody waits for any more goes on
	// before it is cancelled, unless it is close to done; default 5s.
	Abandon time.Duration
}

func (l *FillLimits) setDefaults() {
	if l.Max <= 0 {
		l.Max = 16
	}
	if l.PerUpstream <= 0 {
		l.PerUpstream = 8
	}
	if l.Queue <= 0 {
		l.Queue = 10 * time.Second
	}
	if l.Abandon <= 0 {
		l.Abandon = 5 * time.Second
	}
}

// Options configure a Cache.
type Options struct {
	Store     *store.Store
	Upstreams []UpstreamOptions
	Fills     FillLimits
	Conns     ConnLimits
	Logger    *slog.Logger
	Now       func() time.Time
	// Registerer receives the cache's Prometheus collectors; nil: none.
	Registerer prometheus.Registerer
}

type upstream struct {
	Upstream
	name              string // canonical registry name: docker.io for any of its aliases
	tagTTL            time.Duration
	revalidateTimeout time.Duration
	fills             chan struct{} // this upstream's download slots
}

// Cache serves the OCI distribution API from the store, filling it from
// upstreams.
type Cache struct {
	store     *store.Store
	upstreams atomic.Pointer[upstreamTable] // replaced whole on reload
	log       *slog.Logger
	now       func() time.Time
	metrics   *metrics
	limits    FillLimits
	conns     ConnLimits
	fills     chan struct{} // download slots in all

	// ctx outlives requests: upstream work runs on it so a client leaving
	// does not abort a download others wait for; Close cancels it.
	ctx     context.Context
	cancel  context.CancelFunc
	closing sync.Mutex // orders track against Close
	work    sync.WaitGroup

	manifests singleflight.Group
	lists     listCache
}

// New builds a cache. It does no I/O.
func New(opts Options) (*Cache, error) {
	if opts.Store == nil {
		return nil, errors.New("cache: no store")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Fills.setDefaults()
	opts.Conns.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{store: opts.Store, log: opts.Logger, now: opts.Now, metrics: newMetrics(opts.Registerer),
		limits: opts.Fills, conns: opts.Conns, fills: make(chan struct{}, opts.Fills.Max), ctx: ctx, cancel: cancel}
	c.lists.init()
	if err := c.SetUpstreams(opts.Upstreams); err != nil {
		cancel()
		return nil, err
	}
	return c, nil
}

// upstreamTable maps canonical registry names to upstreams.
type upstreamTable struct {
	byName      map[string]*upstream
	defaultName string
}

func (t *upstreamTable) lookup(host string) *upstream { return t.byName[canonicalHost(host)] }

func (t *upstreamTable) fallback() *upstream { return t.byName[t.defaultName] }

// SetUpstreams replaces the upstreams at once (a config reload). Requests
// already routed finish with the upstream they started with.
func (c *Cache) SetUpstreams(ups []UpstreamOptions) error {
	t := &upstreamTable{byName: map[string]*upstream{}}
	for _, o := range ups {
		name := canonicalHost(o.Upstream.Name())
		if o.RevalidateTimeout <= 0 {
			o.RevalidateTimeout = 2 * time.Second
		}
		if o.MaxFills <= 0 {
			o.MaxFills = c.limits.PerUpstream
		}
		slots := make(chan struct{}, o.MaxFills)
		if old := c.upstreams.Load(); old != nil { // a reload: downloads running keep counting
			if prev := old.byName[name]; prev != nil && cap(prev.fills) == o.MaxFills {
				slots = prev.fills
			}
		}
		u := &upstream{Upstream: o.Upstream, name: name, tagTTL: o.TagTTL, revalidateTimeout: o.RevalidateTimeout,
			fills: slots}
		if t.byName[name] != nil {
			return fmt.Errorf("cache: upstream %s configured twice", name)
		}
		t.byName[name] = u
		if o.Default {
			t.defaultName = name
		}
	}
	c.upstreams.Store(t)
	return nil
}

// track counts background work that must end before Close returns; it
// reports false once Close has begun.
func (c *Cache) track() bool {
	c.closing.Lock()
	defer c.closing.Unlock()
	if c.ctx.Err() != nil {
		return false
	}
	c.work.Add(1)
	return true
}

// Close stops downloads and revalidations in flight (partial data is
// discarded) and waits for them.
func (c *Cache) Close() {
	c.closing.Lock()
	c.cancel()
	c.closing.Unlock()
	c.work.Wait()
}

// outcome says how a request was served, for the access log.
type outcome string

const (
	outcomeNone  outcome = ""
	outcomeHit   outcome = "hit"   // from the store, fresh
	outcomeMiss  outcome = "miss"  // fetched from upstream
	outcomeStale outcome = "stale" // from the store, upstream unreachable or slow
	outcomeFill  outcome = "fill"  // streamed while being fetched
)

// handler is the fasthttp request handler.
func (c *Cache) handler(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	ctx.Response.Header.Set("Docker-Distribution-API-Version", "registry/2.0")
	k, out, err := c.handle(ctx)
	if err != nil {
		re := toRegError(err, transport.UnknownErrorCode)
		if re.Status >= 500 {
			c.log.Error("request failed", "id", ctx.ID(), "path", string(ctx.Path()), "err", err)
		}
		ctx.Response.ResetBody()
		for _, h := range []string{"Cache-Control", "Etag", "Docker-Content-Digest", "Accept-Ranges", "Content-Range"} {
			ctx.Response.Header.Del(h) // set for a success that did not happen
		}
		if re.Status == http.StatusRequestedRangeNotSatisfiable && re.rangeSize >= 0 {
			ctx.Response.Header.Set("Content-Range", "bytes */"+strconv.FormatInt(re.rangeSize, 10))
		}
		if re.RetryAfter > 0 {
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(re.RetryAfter))
		}
		ctx.SetStatusCode(re.Status)
		ctx.SetContentType("application/json")
		ctx.SetBody(re.body())
	}
	took := time.Since(start)
	status := ctx.Response.StatusCode()
	c.metrics.observe(k, methodName(ctx), status, out, took.Seconds())
	if c.log.Enabled(context.Background(), slog.LevelInfo) {
		c.log.Info("request", "id", ctx.ID(), "method", methodName(ctx), "path", string(ctx.Path()),
			"status", status, "cache", string(out), "remote", ctx.RemoteIP().String(),
			"ms", float64(took.Microseconds())/1000)
	}
}

// methodName is the request method for metrics and logs: the standard
// ones by name, anything else (fasthttp accepts any token) as "other", so
// that made-up methods cannot grow the set of metric series.
func methodName(ctx *fasthttp.RequestCtx) string {
	switch m := ctx.Method(); {
	case ctx.IsGet():
		return http.MethodGet
	case ctx.IsHead():
		return http.MethodHead
	default:
		for _, std := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
			if string(m) == std {
				return std
			}
		}
	}
	return "other"
}

func (c *Cache) handle(ctx *fasthttp.RequestCtx) (kind, outcome, error) {
	// The path as sent, not fasthttp's decoded and normalized one: a name
	// with %2f or .. in it is invalid, not something to reinterpret.
	r, err := c.parseRoute(string(ctx.Request.URI().PathOriginal()), string(ctx.QueryArgs().Peek("ns")))
	if err != nil {
		return kindUnknown, outcomeNone, err
	}
	out, err := c.serve(ctx, r)
	return r.kind, out, err
}

func (c *Cache) serve(ctx *fasthttp.RequestCtx, r route) (outcome, error) {
	if !ctx.IsGet() && !ctx.IsHead() || r.kind == kindUpload {
		return outcomeNone, newError(http.StatusMethodNotAllowed, transport.UnsupportedErrorCode,
			"this Outpost is a read-only cache: %s is not supported here", ctx.Method())
	}
	switch r.kind {
	case kindBase:
		ctx.SetContentType("application/json")
		ctx.SetBodyString("{}")
		return outcomeNone, nil
	case kindCatalog:
		return outcomeHit, c.catalog(ctx)
	case kindTags:
		return outcomeHit, c.tags(ctx, r)
	case kindReferrers:
		return outcomeHit, c.referrers(ctx, r)
	case kindManifest:
		return c.manifest(ctx, r)
	default:
		return c.blob(ctx, r)
	}
}
