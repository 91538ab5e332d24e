package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads /metrics from the admin listener.
func (o *outpost) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + o.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// value returns the sum of a metric's samples whose labels include want.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var sum float64
	f := families[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// /metrics counts a miss, a hit and a stale serve; labels carry no
// repository, tag or digest.
func TestMetricsCountHitMissStale(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 10_000, 1)
	up.push("acme/app", "1", img)
	o := startOutpost(t, config(up, "0s"), "")

	o.get(t, http.MethodGet, "/v2/acme/app/manifests/1") // miss
	up.setFault(fault503)
	o.get(t, http.MethodGet, "/v2/acme/app/manifests/1") // stale: upstream answers 503
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	up.setFault(faultNone)
	o.get(t, http.MethodGet, "/v2/acme/app/blobs/"+d.String()) // fill
	// The client has its bytes once they are verified; the fill then fsyncs
	// and commits. Wait for that before asking again.
	for i := 0; i < 100 && value(o.scrape(t), "outpost_fills_in_flight", nil) != 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	o.get(t, http.MethodGet, "/v2/acme/app/blobs/"+d.String()) // hit

	m := o.scrape(t)
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"outpost_cache_results_total", map[string]string{"kind": "manifest", "result": "miss"}, 1},
		{"outpost_cache_results_total", map[string]string{"kind": "manifest", "result": "stale"}, 1},
		{"outpost_cache_results_total", map[string]string{"kind": "blob", "result": "fill"}, 1},
		{"outpost_cache_results_total", map[string]string{"kind": "blob", "result": "hit"}, 1},
		{"outpost_http_requests_total", map[string]string{"route": "manifest", "code": "200"}, 2},
		{"outpost_upstream_errors_total", map[string]string{"upstream": "docker.io", "reason": "503"}, 1},
		{"outpost_upstream_up", map[string]string{"upstream": "docker.io"}, 1},
		{"outpost_fills_in_flight", nil, 0},
		{"outpost_fill_responses_cut_total", nil, 0},
		{"outpost_store_blobs", nil, 2}, // the manifest and the layer
	}
	for _, c := range checks {
		if got := value(m, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	size, _ := layers[0].Size()
	if got := value(m, "outpost_upstream_fetched_bytes_total", nil); got < float64(size) {
		t.Errorf("fetched bytes %v < layer size %d", got, size)
	}
	if got := value(m, "outpost_served_bytes_total", map[string]string{"source": "store"}); got < float64(size) {
		t.Errorf("bytes served from store %v < layer size %d", got, size)
	}
	for name, f := range m {
		for _, metric := range f.Metric {
			for _, l := range metric.Label {
				if strings.Contains(l.GetValue(), "acme") || strings.Contains(l.GetValue(), "sha256") {
					t.Errorf("%s has label %s=%q: repositories and digests must not be labels", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + o.admin + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, resp, err)
		}
	}
}

// A reload swaps upstreams; a bad config file is refused and the running
// config stays.
func TestReload(t *testing.T) {
	first, second := newUpstream(t), newUpstream(t)
	d1 := first.push("acme/app", "1", randomImage(t, 100, 1))
	d2 := second.push("acme/app", "1", randomImage(t, 100, 1))
	o := startOutpost(t, config(first, "0s"), "")
	digest := func() string {
		_, h, _ := o.get(t, http.MethodGet, "/v2/acme/app/manifests/1")
		return h.Get("Docker-Content-Digest")
	}
	if got := digest(); got != d1.String() {
		t.Fatalf("before reload: %s", got)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(path, []byte("upstreams: [this is not: valid"), 0o600)
	o.app.reloadFrom(path, loadConfig)
	if got := digest(); got != d1.String() {
		t.Fatalf("after a bad reload: %s, want the old upstream's %s", got, d1)
	}
	cfg := strings.ReplaceAll(config(second, "0s"), "%ROOT%", o.root)
	os.WriteFile(path, []byte(cfg), 0o600)
	o.app.reloadFrom(path, loadConfig)
	if got := digest(); got != d2.String() {
		t.Fatalf("after reload: %s, want the new upstream's %s", got, d2)
	}
}
