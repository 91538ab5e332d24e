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
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/hashicorp/go-retryablehttp"
)

// Options configure one upstream registry: where it is, how it is reached,
// and the transfer policy for everything fetched from it. Zero durations
// and counts take the defaults noted.
type Options struct {
	Name     string   // the registry host clients think they talk to, e.g. docker.io
	URLs     []string // tried in order; scheme://host[:port]
	Insecure bool     // allow plain HTTP and unverified TLS
	CAFile   string   // extra PEM roots
	Auth     authn.Authenticator

	RequestTimeout  time.Duration // one request until its answer (a manifest: its body too), retries included; default 20s
	ProbeTimeout    time.Duration // one health probe; default 15s
	ProbeInterval   time.Duration // how often something unhealthy is probed; default 5s
	DownAfter       int           // connection-level failures within DownWindow that mark the upstream down; default 3
	DownWindow      time.Duration // default 1m
	Failback        time.Duration // how long a failed URL is passed over; default 1m
	MaxRequests     int           // concurrent requests to this upstream (until their answer); default 32
	RetryMax        int           // retries per URL, default 2
	RetryWaitMin    time.Duration // default 100ms
	RetryWaitMax    time.Duration // also the longest Retry-After honoured, default 3s
	MaxRedirects    int           // default 3
	BodyIdleTimeout time.Duration // a blob body silent this long is broken, default 60s
	BlobTimeout     time.Duration // one blob download from start to end, resumes included; default 1h
	MaxBlobSize     int64         // larger blobs are refused; default 0: no limit
	BlobResumes     int           // how often a broken blob body is resumed with Range, default 5
	UserAgent       string
	Logger          *slog.Logger
	Metrics         *Metrics // shared by all upstreams; nil: not exported
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RequestTimeout, 20*time.Second)
	def(&o.ProbeTimeout, 15*time.Second)
	def(&o.ProbeInterval, 5*time.Second)
	def(&o.DownWindow, time.Minute)
	def(&o.Failback, time.Minute)
	def(&o.RetryWaitMin, 100*time.Millisecond)
	def(&o.RetryWaitMax, 3*time.Second)
	def(&o.BodyIdleTimeout, 60*time.Second)
	def(&o.BlobTimeout, time.Hour)
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	defInt(&o.DownAfter, 3)
	defInt(&o.MaxRequests, 32)
	defInt(&o.RetryMax, 2)
	defInt(&o.MaxRedirects, 3)
	defInt(&o.BlobResumes, 5)
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
	base      *url.URL
	reg       name.Registry
	guard     http.RoundTripper // redirect guard over the shared retrying transport
	coolUntil atomic.Int64      // unix nanoseconds until which it is passed over; 0: in good standing
	unreached atomic.Bool       // it failed at the connection level: the probe watches for its return
}

// Upstream is one upstream registry with its URLs, credentials and health.
type Upstream struct {
	opts        Options
	endpoints   []endpoint
	probeClient *http.Client  // no retries, no redirects: one quick look, within ProbeTimeout
	requests    chan struct{} // semaphore of MaxRequests

	mu         sync.Mutex
	transports map[string]http.RoundTripper // authenticated, per endpoint and repository scope

	health   health
	limit    rateLimit
	stop     chan struct{}
	stopOnce sync.Once
	probing  sync.WaitGroup
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
		requests: make(chan struct{}, opts.MaxRequests), endpoints: make([]endpoint, len(opts.URLs))}
	u.limit.remaining.Store(-1)
	probe := base.Clone()
	probe.ResponseHeaderTimeout = opts.ProbeTimeout
	u.probeClient = &http.Client{Transport: probe, CheckRedirect: noRedirects}
	// Redirects are followed by the outer client in send, under the policy;
	// the retrying client below must hand them up unfollowed.
	retrying := &retryablehttp.RoundTripper{Client: &retryablehttp.Client{
		HTTPClient:   &http.Client{Transport: base, CheckRedirect: noRedirects},
		RetryMax:     opts.RetryMax,
		RetryWaitMin: opts.RetryWaitMin,
		RetryWaitMax: opts.RetryWaitMax,
		CheckRetry:   retryPolicy(opts.RetryWaitMax),
		Backoff:      retryablehttp.DefaultBackoff,
		ErrorHandler: retryablehttp.PassthroughErrorHandler, // keep the last response and its OCI error body
		Logger:       quietLogger{opts.Logger.With("upstream", opts.Name)},
	}}
	for i, raw := range opts.URLs {
		b, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", opts.Name, err)
		}
		var regOpts []name.Option
		if b.Scheme == "http" {
			regOpts = append(regOpts, name.Insecure)
		}
		reg, err := name.NewRegistry(b.Host, regOpts...)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", opts.Name, err)
		}
		u.endpoints[i].base, u.endpoints[i].reg = b, reg
		u.endpoints[i].guard = &redirectGuard{origin: b, maxRedirects: opts.MaxRedirects,
			next: transport.NewUserAgent(retrying, opts.UserAgent)}
	}
	opts.Metrics.up.WithLabelValues(opts.Name).Set(1)
	return u, nil
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func baseTransport(opts Options) (*http.Transport, error) {
	tlsConf := &tls.Config{InsecureSkipVerify: opts.Insecure, MinVersion: tls.VersionTLS12} //nolint:gosec // opt-in per upstream
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
	// A satellite link's round trip can be seconds: connecting gets 10 s.
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !proxyConfigured() {
		dialer.ControlContext = refuseNonPublic
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: opts.RequestTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}, nil
}

// retryPolicy retries what retryablehttp retries (connection errors, 429,
// 5xx), except a Retry-After longer than we are prepared to wait (that
// answer goes back to the client at once) and except for a half-open
// attempt on a down upstream, which gets one try.
func retryPolicy(maxWait time.Duration) retryablehttp.CheckRetry {
	return func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		if ctx.Value(noRetryKey{}) != nil && ctx.Err() == nil {
			return false, nil
		}
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

type noRetryKey struct{}

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

// Close stops the background probe.
func (u *Upstream) Close() {
	u.stopOnce.Do(func() { close(u.stop) })
	u.health.mu.Lock() // orders the close after a startProbe that got in first
	u.health.mu.Unlock()
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
	ep := &u.endpoints[i]
	scope := ep.reg.Repo(repo).Scope(transport.PullScope)
	if repo == "" { // the catalog
		scope = ep.reg.Scope("catalog:*")
	}
	t, err := transport.NewWithContext(ctx, ep.reg, u.opts.Auth, ep.guard, []string{scope})
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

// do sends one request for repo to the upstream, failing over across its
// URLs, and keeps the health state. Answers of 404, 401 and 403 are not
// final while other URLs remain: they come back as an *Error only when no
// URL had the thing (NotFound/Denied when every URL agreed, Unavailable when
// some could not answer). Other answers come back as the response, for the
// caller to interpret.
func (u *Upstream) do(ctx context.Context, op, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	trial, ok := u.admit()
	if !ok {
		return nil, u.failed(&Error{Upstream: u.opts.Name, Op: op, Err: ErrDown})
	}
	if trial {
		defer u.endTrial()
		ctx = context.WithValue(ctx, noRetryKey{}, true)
	}
	select {
	case u.requests <- struct{}{}:
		defer func() { <-u.requests }()
	case <-ctx.Done():
		return nil, u.failed(&Error{Upstream: u.opts.Name, Op: op, Err: fmt.Errorf("%w: %w", errNoSlot, context.Cause(ctx))})
	}
	start := time.Now()
	resp, answered, err := u.tryEndpoints(ctx, op, method, repo, path, query, header)
	u.opts.Metrics.latency.WithLabelValues(u.opts.Name, op).Observe(time.Since(start).Seconds())
	switch {
	case answered:
		u.recordAnswer("")
	case isFailure(ctx, err):
		u.recordFailure(err)
	}
	if err != nil {
		return nil, u.failed(err)
	}
	return resp, nil
}

func (u *Upstream) tryEndpoints(ctx context.Context, op, method, repo, path string, query url.Values, header http.Header) (*http.Response, bool, error) {
	var buf [4]int
	var absent, failure *Error
	answered := false
	order := u.order(buf[:0])
	for k, i := range order {
		attempt, slow := urlShare(ctx, len(order)-k)
		resp, err := u.send(attempt, i, method, repo, path, query, header)
		if slow != nil && !slow() && err == nil { // its share ran out just as it answered
			resp.Body.Close()
			resp, err = nil, errURLSlow
		}
		if err != nil && errors.Is(context.Cause(attempt), errURLSlow) && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", errURLSlow, err)
		}
		var e *Error
		switch {
		case err != nil && ctx.Err() != nil: // the caller left, or the whole budget is spent
			return nil, answered, &Error{Upstream: u.opts.Name, Op: op, Err: err}
		case err != nil:
			e = classify(u.opts.Name, op, err)
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests ||
			resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			e = responseError(u.opts.Name, op, resp)
		default:
			u.endpointOK(i)
			if k > 0 {
				u.opts.Metrics.failovers.WithLabelValues(u.opts.Name).Inc()
			}
			return resp, true, nil
		}
		switch {
		case e.NotFound() || e.Denied():
			u.endpointOK(i)
			answered = true
			if absent == nil || (e.NotFound() && !absent.NotFound()) {
				absent = e
			}
		case e.BadContent(): // a refused redirect, or an answer Outpost cannot use
			answered = true
			failure = e
		case e.Status == 0:
			u.endpointFailed(i, true)
			failure = e
		case e.Status >= 500 && e.Status != http.StatusNotImplemented:
			u.endpointFailed(i, false)
			failure = e
		default: // 429, 501: an answer, but not a usable one
			answered = true
			failure = e
		}
	}
	switch {
	case absent != nil && failure != nil:
		// Not found on some URLs, and others could not say: not definite.
		return nil, answered, &Error{Upstream: u.opts.Name, Op: op, Status: failure.Status,
			Refused: failure.Refused, Invalid: failure.Invalid,
			Err: fmt.Errorf("not found on every URL that answered (%v), and %w", absent.Err, failure)}
	case absent != nil:
		return nil, answered, absent
	}
	return nil, answered, failure
}

// errURLSlow is why one URL's attempt was cut to leave time for the others.
var errURLSlow = errors.New("no answer within this URL's share of the request budget")

// errNoSlot is why a request never went out: every request slot was taken.
var errNoSlot = errors.New("waiting for a free request slot")

type headerDeadlineKey struct{}

// urlShare gives one URL its share of what is left of the request's budget
// when others remain to be tried, so that a URL that accepts connections
// but never answers does not use it all. stop, if not nil, ends the share
// once the answer came; it reports false if the share ran out first.
func urlShare(ctx context.Context, left int) (context.Context, func() bool) {
	if left < 2 {
		return ctx, nil
	}
	deadline, ok := ctx.Deadline()
	if d, has := ctx.Value(headerDeadlineKey{}).(time.Time); has && (!ok || d.Before(deadline)) {
		deadline, ok = d, true
	}
	if !ok {
		return ctx, nil
	}
	attempt, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(time.Until(deadline)/time.Duration(left), func() { cancel(errURLSlow) })
	return attempt, t.Stop
}

// classify turns a request error into an *Error: a refused redirect, an
// answer of the ping or the token exchange, a connection-level failure
// (Status 0: refused, reset, no answer in time), or an answer Outpost
// cannot use (Invalid: a certificate it does not trust, a token response
// that is not one).
func classify(upstream, op string, err error) *Error {
	e := &Error{Upstream: upstream, Op: op, Err: err, Refused: errors.Is(err, errRedirect)}
	var te *transport.Error
	switch {
	case e.Refused:
	case errors.As(err, &te):
		switch s := te.StatusCode; {
		case s == http.StatusUnauthorized || s == http.StatusForbidden || s == http.StatusTooManyRequests || s >= 500:
			e.Status = s
		default: // a 404 at /v2/ or at the token realm is a misrouted front, not "no such thing"
			e.Invalid = true
		}
	case !connectionLevel(err):
		e.Invalid = true
	}
	return e
}

// connectionLevel reports whether err is the network failing: no
// connection, a reset, a timeout, a connection closed mid-answer.
func connectionLevel(err error) bool {
	if errors.Is(err, errURLSlow) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var op *net.OpError
	var dns *net.DNSError
	if errors.As(err, &op) || errors.As(err, &dns) {
		return true
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if ne, ok := e.(net.Error); ok && ne.Timeout() { // the transport's own timeouts (TLS handshake, headers)
			if _, isURL := e.(*url.Error); !isURL {
				return true
			}
		}
	}
	return false
}

func (u *Upstream) send(ctx context.Context, i int, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	t, err := u.transport(ctx, i, repo)
	if err != nil {
		return nil, redactErr(err)
	}
	ep := &u.endpoints[i]
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	// ns names the registry to a chained Outpost (the spec's parameter for
	// proxies); registries ignore it.
	q.Set("ns", u.opts.Name)
	target := ep.base.Scheme + "://" + ep.base.Host + "/v2/" + repo + path + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Transport: t, CheckRedirect: u.checkRedirect}).Do(req)
	if err == nil {
		u.limit.note(resp.Header)
	}
	return resp, redactErr(err)
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
		case ue.Invalid:
			reason = "invalid"
		case ue.Refused:
			reason = "redirect"
		case ue.Status != 0:
			reason = strconv.Itoa(ue.Status)
		}
	}
	u.opts.Metrics.errors.WithLabelValues(u.opts.Name, op, reason).Inc()
	return err
}

// responseError turns a non-success response into an *Error, keeping a
// bounded excerpt of the registry's error body; not of a redirect target's,
// which may echo its presigned query.
func responseError(upstream, op string, resp *http.Response) *Error {
	defer resp.Body.Close()
	if resp.Request != nil && resp.Request.Response != nil {
		return &Error{Upstream: upstream, Op: op, Status: resp.StatusCode,
			Err: fmt.Errorf("status %d from the redirect target %s", resp.StatusCode, redactURL(resp.Request.URL))}
	}
	err := transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
	if err == nil {
		err = fmt.Errorf("unexpected status %d", resp.StatusCode)
	}
	return &Error{Upstream: upstream, Op: op, Status: resp.StatusCode, RetryAfter: retryAfterOf(resp), Err: redactErr(err)}
}

// quietLogger turns retryablehttp's per-attempt logging into debug lines
// without query strings; what finally fails is logged once by the caller.
type quietLogger struct{ log *slog.Logger }

func (l quietLogger) Error(msg string, kv ...any) { l.log.Debug(msg, redactArgs(kv)...) }
func (l quietLogger) Warn(msg string, kv ...any)  { l.log.Debug(msg, redactArgs(kv)...) }
func (l quietLogger) Info(msg string, kv ...any)  { l.log.Debug(msg, redactArgs(kv)...) }
func (l quietLogger) Debug(msg string, kv ...any) { l.log.Debug(msg, redactArgs(kv)...) }

func redactArgs(kv []any) []any {
	out := make([]any, len(kv))
	for i, v := range kv {
		switch x := v.(type) {
		case *url.URL:
			out[i] = redactURL(x)
		case string:
			out[i] = redactString(x)
		case error:
			out[i] = redactString(redactErr(x).Error())
		default:
			out[i] = v
		}
	}
	return out
}

// redactString drops the query of every URL in s.
func redactString(s string) string {
	fields := strings.Fields(s)
	changed := false
	for i, f := range fields {
		if strings.Contains(f, "://") && strings.Contains(f, "?") {
			fields[i], changed = redactURLString(strings.Trim(f, `"`)), true
		}
	}
	if !changed {
		return s
	}
	return strings.Join(fields, " ")
}
