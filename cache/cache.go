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
	"net"
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
// repository at the upstream (library/alpine), ref a tag or digest.
type Upstream interface {
	Name() string
	// Down reports that the upstream is known unreachable: cached content is
	// then served without asking it.
	Down() bool
	// Manifest returns verified manifest bytes and their descriptor.
	Manifest(ctx context.Context, repo, ref string) ([]byte, v1.Descriptor, error)
	// Head returns what ref points at now, within a short deadline.
	Head(ctx context.Context, repo, ref string) (v1.Descriptor, error)
	// Blob opens a blob from offset; size is the total size, -1 if unknown.
	Blob(ctx context.Context, repo string, d v1.Hash, offset int64) (io.ReadCloser, int64, error)
	// Tags lists the repository's tags upstream.
	Tags(ctx context.Context, repo string) ([]string, error)
	// Referrers lists the manifests upstream whose subject is d.
	Referrers(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error)
}

// UpstreamOptions is one configured upstream.
type UpstreamOptions struct {
	Upstream Upstream
	TagTTL   time.Duration // how long a tag is served without asking upstream
	Default  bool          // serves names without a registry host
}

// Options configure a Cache.
type Options struct {
	Store     *store.Store
	Upstreams []UpstreamOptions
	Logger    *slog.Logger
	Now       func() time.Time
	// Registerer receives the cache's Prometheus collectors; nil: none.
	Registerer prometheus.Registerer
}

type upstream struct {
	Upstream
	name   string // canonical registry name: docker.io for any of its aliases
	tagTTL time.Duration
}

// Cache serves the OCI distribution API from the store, filling it from
// upstreams.
type Cache struct {
	store     *store.Store
	upstreams atomic.Pointer[upstreamTable] // replaced whole on reload
	log       *slog.Logger
	now       func() time.Time
	metrics   *metrics

	// ctx outlives requests: fills run on it so a client leaving does not
	// abort a download others wait for; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	work   sync.WaitGroup

	manifests singleflight.Group
	fillsMu   sync.Mutex
	fills     map[string]*fill
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
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{store: opts.Store, log: opts.Logger, now: opts.Now,
		metrics: newMetrics(opts.Registerer), ctx: ctx, cancel: cancel, fills: map[string]*fill{}}
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
		u := &upstream{Upstream: o.Upstream, name: name, tagTTL: o.TagTTL}
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

// Close stops fills in flight (their partial data is discarded) and waits
// for them. Taking fillsMu orders it after any joinFill that got in first.
func (c *Cache) Close() {
	c.fillsMu.Lock()
	c.cancel()
	c.fillsMu.Unlock()
	c.work.Wait()
}

// Server returns a fasthttp server for the cache, tuned for long blob
// downloads on small machines.
func (c *Cache) Server() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                       c.Handler,
		Name:                          "outpost",
		ReadTimeout:                   60 * time.Second, // reading a request; WriteTimeout would cut long blobs
		IdleTimeout:                   120 * time.Second,
		MaxRequestBodySize:            1 << 20, // this API takes no bodies
		ReduceMemoryUsage:             true,
		NoDefaultContentType:          true,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Logger:                        connLogger{c.log},
	}
}

// Serve serves on ln until ctx ends, then shuts down gracefully.
func (c *Cache) Serve(ctx context.Context, ln net.Listener) error {
	srv := c.Server()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return c.shutdown(srv)
	}
}

// Grace periods of a shutdown: for responses in flight, then for the
// connections cut by stopping the downloads they stream from.
const (
	shutdownGrace = 10 * time.Second
	shutdownCut   = 2 * time.Second
)

// shutdown stops accepting and lets responses in flight finish. Those still
// streaming a download after the grace period are cut cleanly by stopping
// the downloads (whose partial data is discarded); that is the expected end
// of a stop, not an error.
func (c *Cache) shutdown(srv *fasthttp.Server) error {
	grace, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.ShutdownWithContext(grace); err == nil {
		return nil
	}
	c.log.Warn("responses still in flight after the grace period; stopping their downloads", "grace", shutdownGrace)
	c.Close()
	cut, cancelCut := context.WithTimeout(context.Background(), shutdownCut)
	defer cancelCut()
	if err := srv.ShutdownWithContext(cut); err != nil {
		c.log.Warn("connections left open at shutdown", "err", err)
	}
	return nil
}

// outcome says how a request was served, for the access log.
type outcome string

const (
	outcomeNone  outcome = ""
	outcomeHit   outcome = "hit"   // from the store, fresh
	outcomeMiss  outcome = "miss"  // fetched from upstream
	outcomeStale outcome = "stale" // from the store, upstream unreachable
	outcomeFill  outcome = "fill"  // streamed while being fetched
)

// Handler is the fasthttp request handler.
func (c *Cache) Handler(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	ctx.Response.Header.Set("Docker-Distribution-API-Version", "registry/2.0")
	k, out, err := c.handle(ctx)
	if err != nil {
		re := toRegError(err, transport.UnknownErrorCode)
		if re.Status >= 500 {
			c.log.Error("request failed", "id", ctx.ID(), "path", string(ctx.Path()), "err", err)
		}
		ctx.Response.ResetBody()
		for _, h := range []string{"Cache-Control", "Etag", "Docker-Content-Digest", "Accept-Ranges"} {
			ctx.Response.Header.Del(h) // set for a success that did not happen
		}
		ctx.SetStatusCode(re.Status)
		ctx.SetContentType("application/json")
		ctx.SetBody(re.body())
	}
	took := time.Since(start)
	route, status := routeNames[k], ctx.Response.StatusCode()
	c.metrics.requests.WithLabelValues(route, string(ctx.Method()), strconv.Itoa(status)).Inc()
	c.metrics.duration.WithLabelValues(route).Observe(took.Seconds())
	if out != outcomeNone && (k == kindManifest || k == kindBlob) {
		c.metrics.results.WithLabelValues(route, string(out)).Inc()
	}
	c.log.Info("request", "id", ctx.ID(), "method", string(ctx.Method()), "path", string(ctx.Path()),
		"status", status, "cache", string(out), "remote", ctx.RemoteIP().String(),
		"ms", float64(took.Microseconds())/1000)
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

// connLogger keeps fasthttp's connection-level errors (a TLS hello sent to
// this plain-HTTP port, a client vanishing) out of the way, and short.
type connLogger struct{ log *slog.Logger }

func (l connLogger) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	l.log.Debug("connection", "detail", msg)
}
