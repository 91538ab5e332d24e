package cache

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the front end's Prometheus collectors. Labels never carry a
// repository, tag or digest: their number must stay bounded.
type metrics struct {
	requests       *prometheus.CounterVec   // route, method, code
	duration       *prometheus.HistogramVec // route
	results        *prometheus.CounterVec   // kind, result
	servedBytes    *prometheus.CounterVec   // source
	fillsInFlight  prometheus.Gauge
	fillWaiters    prometheus.Counter
	fillsCut       prometheus.Counter
	fillsRefused   *prometheus.CounterVec // reason
	fillsAbandoned prometheus.Counter
	conns          prometheus.Gauge
	connsRefused   *prometheus.CounterVec // reason
	series         sync.Map               // requestKey → *requestSeries
	store          prometheus.Counter     // served bytes from the store
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_http_requests_total", Help: "Client requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "outpost_http_request_duration_seconds", Help: "Time to answer a client request (until the body starts).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_cache_results_total", Help: "Manifest and blob requests by how they were served: hit, miss, stale (upstream unreachable or slow) or fill (streamed while downloading).",
		}, []string{"kind", "result"}),
		servedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_served_bytes_total", Help: "Bytes of blob and manifest bodies sent to clients, by source: store or fill.",
		}, []string{"source"}),
		fillsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outpost_fills_in_flight", Help: "Blob downloads from upstream in progress.",
		}),
		fillWaiters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_fill_waiters_total", Help: "Client requests that joined a download already in progress instead of starting one.",
		}),
		fillsCut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_fill_responses_cut_total", Help: "Responses streamed from a download that ended before the client had every byte (digest mismatch, upstream failure, shutdown, client gone).",
		}),
		fillsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_fills_refused_total", Help: "Downloads not started, by reason: busy (every download slot taken) or disk_full (free space below the reserve).",
		}, []string{"reason"}),
		fillsAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_fills_abandoned_total", Help: "Downloads cancelled because no client waited for them any more.",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outpost_http_connections", Help: "Open client connections.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_http_connections_refused_total", Help: "Client connections refused, by limit: total or per_ip.",
		}, []string{"reason"}),
	}
	m.store = m.servedBytes.WithLabelValues("store")
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.results, m.servedBytes, m.fillsInFlight, m.fillWaiters, m.fillsCut,
			m.fillsRefused, m.fillsAbandoned, m.conns, m.connsRefused)
	}
	return m
}

// requestKey names the per-request series, so that each request's
// counters and histogram are found without hashing label values.
type requestKey struct {
	k      kind
	method string
	code   int
	out    outcome
}

type requestSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
	result   prometheus.Counter // nil: no result recorded
}

// observe counts one request. The set of keys is small (routes × methods ×
// status codes seen × outcomes).
func (m *metrics) observe(k kind, method string, code int, out outcome, seconds float64) {
	key := requestKey{k, method, code, out}
	v, ok := m.series.Load(key)
	if !ok {
		route := routeNames[k]
		s := &requestSeries{
			requests: m.requests.WithLabelValues(route, method, strconv.Itoa(code)),
			duration: m.duration.WithLabelValues(route),
		}
		if out != outcomeNone && (k == kindManifest || k == kindBlob) {
			s.result = m.results.WithLabelValues(route, string(out))
		}
		v, _ = m.series.LoadOrStore(key, s)
	}
	s := v.(*requestSeries)
	s.requests.Inc()
	s.duration.Observe(seconds)
	if s.result != nil {
		s.result.Inc()
	}
}

var routeNames = map[kind]string{
	kindUnknown: "unknown", kindBase: "base", kindCatalog: "catalog", kindManifest: "manifest", kindBlob: "blob",
	kindTags: "tags", kindReferrers: "referrers", kindUpload: "upload",
}
