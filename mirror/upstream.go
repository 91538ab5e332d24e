package mirror

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/hashicorp/go-retryablehttp"
)

// Options configure one upstream registry. Zero durations and counts take
// the defaults noted.
type Options struct {
	Name     string   // the registry host clients think they talk to, e.g. docker.io
	URLs     []string // tried in order; scheme://host[:port]
	Insecure bool     // allow plain HTTP and unverified TLS
	CAFile   string   // extra PEM roots
	Auth     authn.Authenticator

	RevalidateTimeout time.Duration // deadline of Head, default 2s
	RetryMax          int           // retries per URL, default 2
	RetryWaitMin      time.Duration // default 100ms
	RetryWaitMax      time.Duration // also the longest Retry-After honoured, default 3s
	DownAfter         int           // consecutive failures before marked down, default 2
	ProbeInterval     time.Duration // how often a down upstream is probed, default 5s
	BodyIdleTimeout   time.Duration // a blob body silent this long is broken, default 60s
	UserAgent         string
	Logger            *slog.Logger
	Metrics           *Metrics // shared by all upstreams; nil: not exported
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RevalidateTimeout, 2*time.Second)
	def(&o.RetryWaitMin, 100*time.Millisecond)
	def(&o.RetryWaitMax, 3*time.Second)
	def(&o.ProbeInterval, 5*time.Second)
	def(&o.BodyIdleTimeout, 60*time.Second)
	if o.RetryMax <= 0 {
		o.RetryMax = 2
	}
	if o.DownAfter <= 0 {
		o.DownAfter = 2
	}
	if o.Auth == nil {
		o.Auth = authn.Anonymous
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.UserAgent == "" {
		o.UserAgent = "outpost"
	}
}

// endpoint is one URL of an upstream.
type endpoint struct {
	base *url.URL
	reg  name.Registry
}

// Upstream is one upstream registry with its URLs, credentials and health.
type Upstream struct {
	opts      Options
	endpoints []endpoint
	inner     http.RoundTripper // retries over the pooled base transport
	probe     *http.Client      // no retries: one quick look

	mu         sync.Mutex
	transports map[string]http.RoundTripper // authenticated, per endpoint and repository scope

	preferred atomic.Int32 // index of the endpoint that last worked
	failures  atomic.Int32
	down      atomic.Bool
	stop      chan struct{}
	stopOnce  sync.Once
	probing   sync.WaitGroup
}

// New builds an upstream. It does no network I/O.
func New(opts Options) (*Upstream, error) {
	opts.setDefaults()
	if len(opts.URLs) == 0 {
		return nil, fmt.Errorf("upstream %s: no URLs", opts.Name)
	}
	base, err := baseTransport(opts)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", opts.Name, err)
	}
	u := &Upstream{opts: opts, transports: map[string]http.RoundTripper{}, stop: make(chan struct{}),
		probe: &http.Client{Transport: base, Timeout: opts.RevalidateTimeout}}
	for _, raw := range opts.URLs {
		base, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", opts.Name, err)
		}
		var regOpts []name.Option
		if base.Scheme == "http" {
			regOpts = append(regOpts, name.Insecure)
		}
		reg, err := name.NewRegistry(base.Host, regOpts...)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", opts.Name, err)
		}
		u.endpoints = append(u.endpoints, endpoint{base: base, reg: reg})
	}
	u.inner = &retryablehttp.RoundTripper{Client: &retryablehttp.Client{
		HTTPClient:   &http.Client{Transport: base},
		RetryMax:     opts.RetryMax,
		RetryWaitMin: opts.RetryWaitMin,
		RetryWaitMax: opts.RetryWaitMax,
		CheckRetry:   retryPolicy(opts.RetryWaitMax),
		Backoff:      retryablehttp.DefaultBackoff,
		ErrorHandler: retryablehttp.PassthroughErrorHandler, // keep the last response and its OCI error body
		Logger:       quietLogger{opts.Logger.With("upstream", opts.Name)},
	}}
	opts.Metrics.up.WithLabelValues(opts.Name).Set(1)
	return u, nil
}

func baseTransport(opts Options) (*http.Transport, error) {
	tlsConf := &tls.Config{InsecureSkipVerify: opts.Insecure} //nolint:gosec // opt-in per upstream
	if opts.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate found", opts.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}, nil
}

// retryPolicy retries what retryablehttp retries (connection errors, 429,
// 5xx), except a Retry-After longer than we are prepared to wait: that
// answer goes back to the client at once.
func retryPolicy(maxWait time.Duration) retryablehttp.CheckRetry {
	return func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		if err != nil && strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
			return false, nil // a plain-HTTP registry: ggcr's ping moves on to http:// at once
		}
		retry, err := retryablehttp.DefaultRetryPolicy(ctx, resp, err)
		if retry && resp != nil {
			if wait, ok := retryAfter(resp.Header.Get("Retry-After")); ok && wait > maxWait {
				return false, nil
			}
		}
		return retry, err
	}
}

func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t), true
	}
	return 0, false
}

// Name is the registry host this upstream stands for.
func (u *Upstream) Name() string { return u.opts.Name }

// Down reports whether the upstream is marked down.
func (u *Upstream) Down() bool { return u.down.Load() }

// Close stops the background probe.
func (u *Upstream) Close() {
	u.stopOnce.Do(func() { close(u.stop) })
	u.probing.Wait()
}

// transport returns an authenticated round tripper for repo at endpoint i,
// pinging the registry (and fetching a token) the first time.
func (u *Upstream) transport(ctx context.Context, i int, repo string) (http.RoundTripper, error) {
	key := strconv.Itoa(i) + "\x00" + repo
	u.mu.Lock()
	t, ok := u.transports[key]
	u.mu.Unlock()
	if ok {
		return t, nil
	}
	ep := u.endpoints[i]
	scope := ep.reg.Repo(repo).Scope(transport.PullScope)
	inner := transport.NewUserAgent(u.inner, u.opts.UserAgent)
	t, err := transport.NewWithContext(ctx, ep.reg, u.opts.Auth, inner, []string{scope})
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	if len(u.transports) >= 1024 { // bound memory; tokens are cheap to fetch again
		clear(u.transports)
	}
	u.transports[key] = t
	u.mu.Unlock()
	return t, nil
}

// do sends one request for repo, failing over across the upstream's URLs,
// and keeps the up/down state. A non-2xx answer is returned as a response
// for the caller to interpret, except 5xx/429 which move on to the next URL.
func (u *Upstream) do(ctx context.Context, op, method, repo, path string, header http.Header) (*http.Response, error) {
	if u.down.Load() {
		return nil, u.failed(&Error{Upstream: u.opts.Name, Op: op, Err: ErrDown})
	}
	start := time.Now()
	resp, err := u.tryEndpoints(ctx, op, method, repo, path, header)
	u.opts.Metrics.latency.WithLabelValues(u.opts.Name, op).Observe(time.Since(start).Seconds())
	u.record(ctx, err, resp)
	if err != nil {
		return nil, u.failed(err)
	}
	return resp, nil
}

// failed counts an error by its reason and returns it.
func (u *Upstream) failed(err error) error {
	reason, op := "unreachable", "unknown"
	var ue *Error
	if errors.As(err, &ue) {
		op = ue.Op
		switch {
		case errors.Is(ue.Err, ErrDown):
			reason = "down"
		case ue.Mismatch:
			reason = "mismatch"
		case ue.Status != 0:
			reason = strconv.Itoa(ue.Status)
		}
	}
	u.opts.Metrics.errors.WithLabelValues(u.opts.Name, op, reason).Inc()
	return err
}

// responseError turns a non-success response into a counted *Error,
// keeping a bounded excerpt of the registry's error body.
func (u *Upstream) responseError(op string, resp *http.Response) error {
	return u.failed(responseError(u.opts.Name, op, resp))
}

func (u *Upstream) tryEndpoints(ctx context.Context, op, method, repo, path string, header http.Header) (*http.Response, error) {
	n := len(u.endpoints)
	first := int(u.preferred.Load())
	var lastErr error
	for k := 0; k < n; k++ {
		i := (first + k) % n
		resp, err := u.send(ctx, i, method, repo, path, header)
		if err != nil {
			lastErr = &Error{Upstream: u.opts.Name, Op: op, Err: err}
			if ctx.Err() != nil {
				return nil, lastErr
			}
			continue
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			lastErr = responseError(u.opts.Name, op, resp)
			if k < n-1 {
				continue
			}
			return nil, lastErr
		}
		u.preferred.Store(int32(i))
		return resp, nil
	}
	return nil, lastErr
}

func (u *Upstream) send(ctx context.Context, i int, method, repo, path string, header http.Header) (*http.Response, error) {
	t, err := u.transport(ctx, i, repo)
	if err != nil {
		return nil, err
	}
	ep := u.endpoints[i]
	target := ep.base.Scheme + "://" + ep.base.Host + "/v2/" + repo + path
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return (&http.Client{Transport: t}).Do(req)
}

// record keeps the health state: repeated failures mark the upstream down
// and start the probe; any real answer resets the count.
func (u *Upstream) record(ctx context.Context, err error, resp *http.Response) {
	if err == nil {
		u.failures.Store(0)
		return
	}
	if !isFailure(ctx, err) {
		return
	}
	if u.failures.Add(1) >= int32(u.opts.DownAfter) && u.down.CompareAndSwap(false, true) {
		u.opts.Metrics.up.WithLabelValues(u.opts.Name).Set(0)
		u.opts.Logger.Warn("upstream marked down; serving cached content without asking it", "upstream", u.opts.Name, "err", err)
		u.probing.Add(1)
		go u.probeUntilUp()
	}
}

func (u *Upstream) probeUntilUp() {
	defer u.probing.Done()
	t := time.NewTicker(u.opts.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-t.C:
		}
		for i, ep := range u.endpoints {
			resp, err := u.probe.Get(ep.base.Scheme + "://" + ep.base.Host + "/v2/")
			if err != nil {
				continue
			}
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode < 500 {
				u.preferred.Store(int32(i))
				u.failures.Store(0)
				u.down.Store(false)
				u.opts.Metrics.up.WithLabelValues(u.opts.Name).Set(1)
				u.opts.Logger.Info("upstream is back", "upstream", u.opts.Name, "url", ep.base.String())
				return
			}
		}
	}
}

// responseError turns a non-success response into an *Error, keeping a
// bounded excerpt of the registry's error body.
func responseError(upstream, op string, resp *http.Response) *Error {
	defer resp.Body.Close()
	err := transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
	if err == nil {
		err = fmt.Errorf("unexpected status %d", resp.StatusCode)
	}
	return &Error{Upstream: upstream, Op: op, Status: resp.StatusCode, Err: err}
}

func mediaTypeOf(contentType string) string {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.TrimSpace(mt)
}

// quietLogger turns retryablehttp's per-attempt logging into debug lines;
// what finally fails is logged once by the caller.
type quietLogger struct{ log *slog.Logger }

func (l quietLogger) Error(msg string, kv ...any) { l.log.Debug(msg, kv...) }
func (l quietLogger) Warn(msg string, kv ...any)  { l.log.Debug(msg, kv...) }
func (l quietLogger) Info(msg string, kv ...any)  { l.log.Debug(msg, kv...) }
func (l quietLogger) Debug(msg string, kv ...any) { l.log.Debug(msg, kv...) }
