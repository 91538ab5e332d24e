package sync

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the mirror jobs' series; one set serves every job (labelled
// by mirror). A nil *Metrics counts nothing.
type Metrics struct {
	runs        *prometheus.CounterVec
	images      *prometheus.CounterVec
	bytesTotal  *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	duration    *prometheus.GaugeVec
}

// NewMetrics registers the series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_mirror_runs_total", Help: "Mirror job runs, by result: ok, partial (some images failed) or failed.",
		}, []string{"mirror", "result"}),
		images: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_mirror_images_synced_total", Help: "Images (tags) a mirror job promoted: new, moved or completed.",
		}, []string{"mirror"}),
		bytesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_mirror_bytes_total", Help: "Bytes a mirror job downloaded (manifests and blobs).",
		}, []string{"mirror"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outpost_mirror_last_success_timestamp_seconds", Help: "When a mirror job last finished with every image synced (Unix time).",
		}, []string{"mirror"}),
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outpost_mirror_last_run_duration_seconds", Help: "How long a mirror job's last run took.",
		}, []string{"mirror"}),
	}
	if reg != nil {
		reg.MustRegister(m.runs, m.images, m.bytesTotal, m.lastSuccess, m.duration)
	}
	return m
}

func (m *Metrics) run(name string, rep *Report, err error) {
	if m == nil || rep.DryRun {
		return
	}
	result := "ok"
	switch {
	case err != nil:
		result = "failed"
	case len(rep.Failed) > 0:
		result = "partial"
	}
	m.runs.WithLabelValues(name, result).Inc()
	end := rep.Finished
	if end.IsZero() {
		end = rep.Started
	}
	if result == "ok" {
		m.lastSuccess.WithLabelValues(name).Set(float64(end.UnixNano()) / 1e9)
	}
}

func (m *Metrics) image(name string) {
	if m != nil {
		m.images.WithLabelValues(name).Inc()
	}
}

func (m *Metrics) bytes(name string, n int64) {
	if m != nil && n > 0 {
		m.bytesTotal.WithLabelValues(name).Add(float64(n))
	}
}

func (m *Metrics) finished(name string, rep *Report) {
	if m != nil && !rep.DryRun {
		m.duration.WithLabelValues(name).Set(rep.Finished.Sub(rep.Started).Seconds())
	}
}
