package bench

// mirrorrun.go measures a mirror run: the pull set synced ahead of time by
// Outpost's mirror engine, by `skopeo sync` (into a registry) and by
// regclient's regsync (into an ocidir:// layout), each through its own
// counting proxy to the same upstream: the time of a first sync, the bytes
// it fetched, and what a second sync with nothing changed upstream sends.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// Columns of the mirror table.
const (
	colSkopeo  = "skopeo"
	colRegsync = "regsync"
)

var mirrorColumns = []string{colOutpost, colSkopeo, colRegsync}

// counter is a reverse proxy to the upstream that counts what passes.
type counter struct {
	url      string
	bytes    atomic.Int64 // response bytes sent (headers not counted)
	requests atomic.Int64
}

func startCounter(tb testing.TB, target string) *counter {
	c := &counter{}
	c.url = serveProxy(tb, target, func(resp *http.Response) {
		c.requests.Add(1)
		resp.Body = &countedBody{ReadCloser: resp.Body, n: &c.bytes}
	})
	return c
}

func (c *counter) host() string { return strings.TrimPrefix(c.url, "http://") }

func (c *counter) take() (bytes, requests int64) {
	return c.bytes.Swap(0), c.requests.Swap(0)
}

type countedBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// measureMirror runs each tool's first and second sync and adds the
// mirror table's rows.
func measureMirror(ctx context.Context, b *testing.B, res *results, c *corpus, dir, upstreamURL string, placeholder bool) {
	skopeo := testenv.RequireTool(b, "skopeo")
	regsync := testenv.RequireTool(b, "regsync")
	var repos []string
	for _, im := range c.images {
		repos = append(repos, im.repo)
	}
	first, firstBytes, second, secondReqs := map[string]float64{}, map[string]float64{}, map[string]float64{}, map[string]float64{}
	counters := map[string]*counter{}
	for _, col := range mirrorColumns {
		counters[col] = startCounter(b, upstreamURL)
	}
	record := func(col string, run func() error) {
		cnt := counters[col]
		for i, what := range []string{"first", "second"} {
			t0 := time.Now()
			if err := run(); err != nil {
				b.Fatalf("mirror run %s, %s sync: %v", col, what, err)
			}
			d := time.Since(t0)
			n, reqs := cnt.take()
			if i == 0 {
				first[col], firstBytes[col] = d.Seconds(), float64(n)/mib
			} else {
				second[col], secondReqs[col] = float64(n)/1024, float64(reqs)
			}
			res.logf("%-32s %8.3f s, %.1f KiB in %d requests from upstream", fmt.Sprintf("mirror %s sync %s", what, col), d.Seconds(), float64(n)/1024, reqs)
		}
	}

	if !placeholder {
		o := startMirroringOutpost(b, filepath.Join(dir, "outpost-mirror"), counters[colOutpost].url, repos)
		record(colOutpost, func() error { return runMirrorJob(ctx, o.Admin, "bench") })
	}

	env := testenv.Env("DOCKER_CONFIG=" + b.TempDir())
	// skopeo sync cannot update a dir: tree in place, so it syncs into a
	// registry of its own, as sites run it.
	dest := testenv.StartRegistry(b, filepath.Join(dir, "skopeo-dest"), testenv.RegistryOptions{})
	record(colSkopeo, func() error {
		for _, repo := range repos {
			r := testenv.Run(5*time.Minute, env, skopeo, "sync", "--src", "docker", "--dest", "docker", "--src-tls-verify=false",
				"--dest-tls-verify=false", counters[colSkopeo].host()+"/"+repo, dest.Addr+"/"+path.Dir(repo))
			if r.Err != nil {
				return fmt.Errorf("%s", r)
			}
		}
		return nil
	})

	cfg := filepath.Join(dir, "regsync.yaml")
	var syncs strings.Builder
	for _, repo := range repos {
		fmt.Fprintf(&syncs, "  - source: %s/%s\n    target: ocidir://%s/%s\n    type: repository\n",
			counters[colRegsync].host(), repo, filepath.Join(dir, "regsync"), repo)
	}
	testenv.WriteFile(b, cfg, fmt.Sprintf("version: 1\ncreds:\n  - registry: %s\n    tls: disabled\nsync:\n%s", counters[colRegsync].host(), syncs.String()))
	record(colRegsync, func() error {
		r := testenv.Run(5*time.Minute, env, regsync, "once", "-c", cfg)
		if r.Err != nil {
			return fmt.Errorf("%s", r)
		}
		return nil
	})

	res.mirrorRows = append(res.mirrorRows,
		row{metric: "First sync (s)", format: "%.3f", values: first},
		row{metric: "Fetched from upstream, first sync (MiB)", format: "%.1f", values: firstBytes},
		row{metric: "Fetched from upstream, second sync, nothing changed (KiB)", format: "%.1f", values: second},
		row{metric: "Upstream requests, second sync", format: "%.0f", values: secondReqs},
	)
	b.ReportMetric(first[colOutpost], "mirror-first-sync-s")
}

// startMirroringOutpost runs Outpost with one mirror of the pull set's
// repositories (every tag) and an admin listener to start it from.
func startMirroringOutpost(tb testing.TB, dir, upstreamURL string, repos []string) *testenv.Server {
	return testenv.StartOutpost(tb, dir, testenv.OutpostConfig{
		Admin: true,
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URL: upstreamURL, Default: true, TagTTL: "5m"},
		},
		Extra: fmt.Sprintf("mirrors:\n  - name: bench\n    upstream: docker.io\n    repositories: [%s]\n", strings.Join(repos, ", ")),
	})
}

// runMirrorJob runs a mirror through the admin API, as `outpost sync`
// does when serve runs, and waits for it.
func runMirrorJob(ctx context.Context, admin, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+"/mirrors/"+name+"/run", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.Contains(string(body), `"failed"`) {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	return nil
}

// mirrorTable renders the mirror rows with their own columns.
func (r *results) mirrorTable() string {
	if len(r.mirrorRows) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| Metric | Outpost (mirror job) | skopeo sync (to a registry) | regsync (ocidir://) | Outpost/skopeo | Outpost/regsync |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|\n")
	for _, rw := range r.mirrorRows {
		cells := []string{rw.metric}
		for _, c := range mirrorColumns {
			if v, ok := rw.values[c]; ok {
				cells = append(cells, fmt.Sprintf(rw.format, v))
			} else {
				cells = append(cells, "–")
			}
		}
		cells = append(cells, ratio(rw.values, colSkopeo), ratio(rw.values, colRegsync))
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}
