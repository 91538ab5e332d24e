package mirror

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the upstream collectors, shared by all upstreams and labelled
// by upstream name (a small, configured set).
type Metrics struct {
	latency      *prometheus.HistogramVec // upstream, op
	errors       *prometheus.CounterVec   // upstream, op, reason
	up           *prometheus.GaugeVec     // upstream
	fetchedBytes *prometheus.CounterVec   // upstream
	failovers    *prometheus.CounterVec   // upstream
}

// NewMetrics creates the collectors and registers them on reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "outpost_upstream_request_duration_seconds", Help: "Upstream round trips (until response headers), by upstream and operation.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"upstream", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_upstream_errors_total", Help: "Failed upstream calls by upstream, operation and reason (unreachable, status code, down, mismatch, invalid, redirect).",
		}, []string{"upstream", "op", "reason"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outpost_upstream_up", Help: "1 while the upstream is considered reachable, 0 while marked down.",
		}, []string{"upstream"}),
		fetchedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_upstream_fetched_bytes_total", Help: "Bytes of manifests and blobs received from upstream.",
		}, []string{"upstream"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_upstream_failovers_total", Help: "Requests answered by an upstream URL other than the first one tried.",
		}, []string{"upstream"}),
	}
	if reg != nil {
		reg.MustRegister(m.latency, m.errors, m.up, m.fetchedBytes, m.failovers)
	}
	return m
}
