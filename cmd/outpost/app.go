package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-oci/outpost/cache"
	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/mirror"
	msync "github.com/outpost-oci/outpost/mirror/sync"
	"github.com/outpost-oci/outpost/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// app is one running Outpost: store, upstreams, front end and metrics.
type app struct {
	log        *slog.Logger
	store      *store.Store
	cache      *cache.Cache
	registry   *prometheus.Registry
	upMetrics  *mirror.Metrics
	mirMetrics *msync.Metrics
	ready      atomic.Bool

	mu        sync.Mutex
	cfg       *configs.Config
	upstreams []*mirror.Upstream
	mirrors   *mirrors        // nil until run starts them
	runCtx    context.Context // run's: ends when Outpost stops
	started   time.Time

	// life orders the mirrors' start and stop (run, reload, shutdown), so
	// a reload during a shutdown cannot start jobs nobody will stop.
	life     sync.Mutex
	stopping bool // under life
}

// start opens the store and builds everything but the listeners.
func start(cfg *configs.Config, log *slog.Logger) (*app, error) {
	st, err := store.Open(cfg.Storage.Root, store.Options{Logger: log.With("component", "store"), Reserve: int64(cfg.Storage.Reserve)})
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := &app{log: log, store: st, registry: reg, upMetrics: mirror.NewMetrics(reg), mirMetrics: msync.NewMetrics(reg), cfg: cfg}
	registerStoreMetrics(reg, st)
	ups, opts, err := a.buildUpstreams(cfg)
	if err != nil {
		st.Close()
		return nil, err
	}
	a.upstreams = ups
	a.cache, err = cache.New(cache.Options{
		Store: st, Upstreams: opts, Logger: log.With("component", "cache"), Registerer: reg,
		Fills: cache.FillLimits{Max: cfg.Fills.Max, PerUpstream: cfg.Fills.PerUpstream, Queue: cfg.Fills.Queue.D(),
			Abandon: cfg.Fills.AbandonAfter.D()},
		Conns: cache.ConnLimits{Max: cfg.HTTP.MaxConnections, PerIP: cfg.HTTP.MaxConnectionsPerIP,
			WriteTimeout: cfg.HTTP.WriteTimeout.D(), ReadTimeout: cfg.HTTP.ReadTimeout.D(), IdleTimeout: cfg.HTTP.IdleTimeout.D()},
	})
	if err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

func (a *app) buildUpstreams(cfg *configs.Config) ([]*mirror.Upstream, []cache.UpstreamOptions, error) {
	var ups []*mirror.Upstream
	var opts []cache.UpstreamOptions
	closeAll := func() {
		for _, u := range ups {
			u.Close()
		}
	}
	for _, u := range cfg.Upstreams {
		auth, err := mirror.Credentials(u.Name, u.Username, u.Password, u.DockerConfig)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		up, err := mirror.New(mirror.Options{
			Name: u.Name, URLs: u.URLs, Insecure: u.Insecure, CAFile: u.CAFile, Auth: auth,
			RequestTimeout: u.RequestTimeout.D(), ProbeTimeout: u.ProbeTimeout.D(), ProbeInterval: u.ProbeInterval.D(),
			DownAfter: u.DownAfter, DownWindow: u.DownWindow.D(), Failback: u.Failback.D(),
			BlobTimeout: cfg.Fills.Timeout.D(), MaxBlobSize: int64(cfg.Fills.MaxBlobSize),
			UserAgent: "outpost/" + version,
			Logger:    a.log.With("component", "mirror"),
			Metrics:   a.upMetrics,
		})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		ups = append(ups, up)
		opts = append(opts, cache.UpstreamOptions{Upstream: up, TagTTL: u.TagTTL.D(), RevalidateTimeout: u.RevalidateTimeout.D(),
			Default: u.Default, MaxFills: u.MaxFills})
	}
	return ups, opts, nil
}

// reloadFrom rereads the config file and swaps in its upstreams and
// credentials. A bad file changes nothing. Settings that need a restart
// (listeners, storage, logging) are reported, not applied.
func (a *app) reloadFrom(path string, load func(string) (*configs.Config, error)) {
	cfg, err := load(path)
	if err != nil {
		a.log.Error("config reload refused; the running config stays", "err", err)
		return
	}
	if err := a.reload(cfg); err != nil {
		a.log.Error("config reload refused; the running config stays", "err", err)
		return
	}
	a.log.Info("config reloaded", "upstreams", len(cfg.Upstreams))
}

func (a *app) reload(cfg *configs.Config) error {
	ups, opts, err := a.buildUpstreams(cfg)
	if err != nil {
		return err
	}
	jobs, err := buildJobs(cfg, ups, a.store, a.mirMetrics, a, nil)
	if err == nil {
		err = a.cache.SetUpstreams(opts)
	}
	if err != nil {
		for _, u := range ups {
			u.Close()
		}
		return err
	}
	a.life.Lock()
	a.mu.Lock()
	old, oldCfg, oldMirrors := a.upstreams, a.cfg, a.mirrors
	a.upstreams, a.cfg = ups, cfg
	a.mu.Unlock()
	if oldMirrors != nil && !a.stopping { // running: the new jobs replace the old ones
		oldMirrors.stop() // before their upstreams close below
		m := startMirrors(jobs, a)
		a.mu.Lock()
		a.mirrors = m
		a.mu.Unlock()
	}
	a.life.Unlock()
	for _, u := range old {
		u.Close() // stops its probe; requests in flight keep their transports
	}
	if cfg.HTTP != oldCfg.HTTP || cfg.Admin != oldCfg.Admin || cfg.Storage != oldCfg.Storage || cfg.Log != oldCfg.Log ||
		cfg.Fills != oldCfg.Fills {
		a.log.Warn("http, admin, storage, log and fills settings take effect at the next restart")
	}
	return nil
}

// run serves clients on ln and the admin endpoints on adminLn (if not nil)
// until ctx ends, then shuts down gracefully.
func (a *app) run(ctx context.Context, ln, adminLn net.Listener) error {
	g, ctx := errgroup.WithContext(ctx)
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	// The mirrors start before the admin listener answers, so that
	// `outpost sync` right after a start finds them.
	a.life.Lock()
	a.mu.Lock()
	cfg, ups := a.cfg, a.upstreams
	a.mu.Unlock()
	var m *mirrors
	jobs, err := buildJobs(cfg, ups, a.store, a.mirMetrics, a, nil)
	if err != nil {
		// Serving matters more; and without the jobs nothing may be
		// judged stale (pins, staging).
		a.log.Error("mirrors not started", "err", err)
	} else {
		m = startMirrors(jobs, a)
	}
	a.mu.Lock()
	a.mirrors = m
	a.started = time.Now()
	attrs := []any{"address", ln.Addr().String(), "storage", a.cfg.Storage.Root, "upstreams", len(a.upstreams),
		"mirrors", len(jobs), "version", version}
	a.mu.Unlock()
	a.life.Unlock()
	g.Go(func() error { return a.cache.Serve(ctx, ln) })
	if adminLn != nil {
		srv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(shutdownCtx)
		})
	}
	a.ready.Store(true)
	if adminLn != nil {
		attrs = append(attrs, "admin", adminLn.Addr().String())
	}
	a.log.Info("serving", attrs...)
	<-ctx.Done()
	a.ready.Store(false)
	a.life.Lock()
	a.stopping = true
	a.mu.Lock()
	m = a.mirrors
	a.mirrors = nil
	a.mu.Unlock()
	a.life.Unlock()
	m.stop()
	err = g.Wait()
	a.log.Info("stopped")
	return err
}

// close stops downloads in flight (discarding partial ones), the upstream
// probes, and closes the store.
func (a *app) close() {
	if a.cache != nil {
		a.cache.Close()
	}
	a.mu.Lock()
	for _, u := range a.upstreams {
		u.Close()
	}
	a.mu.Unlock()
	if err := a.store.Close(); err != nil {
		a.log.Error("closing store", "err", err)
	}
}

func (a *app) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	// Profiles, for diagnosing a slow box in the field; the admin listener
	// is loopback unless the operator says otherwise.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /status", a.serveStatus)
	mux.HandleFunc("GET /images", a.serveImages)
	mux.HandleFunc("GET /mirrors", a.serveMirrorStatus)
	mux.HandleFunc("POST /mirrors/{name}/run", a.serveMirrorRun)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

func registerStoreMetrics(reg prometheus.Registerer, st *store.Store) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_store_blobs", Help: "Blobs and manifests in the store."},
			func() float64 { n, _ := st.Stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_store_size_bytes", Help: "Bytes of blobs and manifests in the store."},
			func() float64 { _, b := st.Stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_store_free_bytes", Help: "Free disk space where the store lives, as last measured."},
			func() float64 { free, _, _ := st.Space(); return float64(free) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_store_reserve_bytes", Help: "Free disk space kept for metadata: below it no new content is cached."},
			func() float64 { _, reserve, _ := st.Space(); return float64(reserve) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outpost_store_full", Help: "1 while new content is refused for lack of disk space."},
			func() float64 {
				if _, _, full := st.Space(); full {
					return 1
				}
				return 0
			}),
	)
}
