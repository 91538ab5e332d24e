package bench

// BenchmarkPullThroughCache compares Outpost with a CNCF distribution
// registry in proxy mode (the peer), with nginx serving the same files and
// with pulling straight from the upstream. Run it with `make bench`.
//
// Environment:
//
//	OUTPOST_BENCH_PLACEHOLDER=1  put a second distribution proxy in Outpost's
//	                             column (harness development only)
//	OUTPOST_BENCH_DURATION=2s    duration of each hot test (after a 0.5 s warm-up)
//	OUTPOST_BENCH_ROUNDS=3       interleaved rounds of the hot tests; the best counts
//	OUTPOST_BENCH_DOCS=0         do not write docs/benchmarks.md
//	OUTPOST_BENCH_KEEP=DIR       work in DIR (must not exist) and keep it:
//	                             configs, logs and data for inspection
//	CI=true                      missing tools fail instead of skip

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func BenchmarkPullThroughCache(b *testing.B) {
	if testing.Short() {
		b.Skip("skipped in -short mode")
	}
	registryBin := testenv.RequireRegistry(b)
	nginxBin := testenv.RequireTool(b, "nginx")
	root := testenv.ModuleRoot(b)
	placeholder := os.Getenv("OUTPOST_BENCH_PLACEHOLDER") == "1"
	hotDur := 2 * time.Second
	if s := os.Getenv("OUTPOST_BENCH_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > time.Minute {
			b.Fatalf("OUTPOST_BENCH_DURATION=%q: want a duration up to 1m", s)
		}
		hotDur = d
	}
	rounds := 3
	if s := os.Getenv("OUTPOST_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10 {
			b.Fatalf("OUTPOST_BENCH_ROUNDS=%q: want 1 to 10", s)
		}
		rounds = n
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := b.TempDir()
	if keep := os.Getenv("OUTPOST_BENCH_KEEP"); keep != "" {
		if err := os.Mkdir(keep, 0o700); err != nil {
			b.Fatalf("OUTPOST_BENCH_KEEP: %v", err)
		}
		dir = keep
	}
	res := &results{start: time.Now(), placeholder: placeholder, hotDuration: hotDur, rounds: rounds, loadStart: loadAvg(), versions: map[string]string{
		"registry": versionOf(registryBin, "--version"),
		"nginx":    versionOf(nginxBin, "-v"),
		"skopeo":   versionOf(testenv.RequireTool(b, "skopeo"), "--version"),
		"regsync":  versionOf(testenv.RequireTool(b, "regsync"), "version"),
	}}

	// Build Outpost before anything runs so compilation doesn't overlap the load.
	if placeholder {
		res.outpostDesc = "placeholder (distribution registry proxy)"
	} else {
		testenv.Outpost(b)
		res.outpostDesc = "outpost " + outpostVersion(root)
	}

	b.ResetTimer()
	for range b.N { // -benchtime 1x: one full run
		up := startUpstream(b, dir)
		upURL := up.URL("")
		c := buildCorpus(ctx, b, dir, upURL)
		res.corpusBytes = c.totalBytes()
		for _, im := range c.images {
			res.corpusBlobs += len(im.blobs)
		}
		peer := startDistributionProxy(b, "peer", dir, upURL)
		var outpost *testenv.Server
		if placeholder {
			outpost = startDistributionProxy(b, "placeholder", dir, upURL)
		} else {
			outpost = startOutpost(b, "outpost", dir, upURL)
		}
		ngx := startNginx(b, nginxBin, dir, c.docroot)
		tee := startTeeProxy(b, root, dir, upURL)
		servers := map[string]*testenv.Server{colOutpost: outpost, colPeer: peer, colDirect: up, colNginx: ngx, colTee: tee}
		fresh := map[string]func(string) *testenv.Server{
			colOutpost: func(name string) *testenv.Server { return startOutpost(b, name, dir, upURL) },
			colPeer:    func(name string) *testenv.Server { return startDistributionProxy(b, name, dir, upURL) },
		}
		if placeholder {
			fresh[colOutpost] = fresh[colPeer]
		}
		// Dirty pages other work left behind (a test run just before) would
		// be flushed by the first fsyncs of the cold pulls and charged to
		// whoever syncs: flush them now.
		syscall.Sync()
		measure(ctx, b, res, c, servers, fresh)
		measureUplink(ctx, b, res, c, dir, upURL, placeholder)
		measureMirror(ctx, b, res, c, dir, upURL, placeholder)
		res.elapsed = time.Since(res.start)
		res.loadEnd = loadAvg()
	}
	b.StopTimer()

	fmt.Print(res.summary())
	if os.Getenv("OUTPOST_BENCH_DOCS") != "0" {
		p := filepath.Join(root, "docs", "benchmarks.md")
		testenv.WriteFile(b, p, res.markdown())
		fmt.Printf("\nwrote %s\n", p)
	}
}

// measure runs every measurement in a fixed order and fills res. fresh
// starts a new, empty instance of a proxy column, for more cold pulls.
func measure(ctx context.Context, b *testing.B, res *results, c *corpus, s map[string]*testenv.Server, fresh map[string]func(string) *testenv.Server) {
	proxies := []string{colOutpost, colPeer}
	var pullDigests []string
	for _, im := range c.images {
		for _, bl := range im.blobs {
			pullDigests = append(pullDigests, bl.digest)
		}
	}
	mustDur := func(what string, d time.Duration, err error) float64 {
		if err != nil {
			b.Fatalf("%s: %v", what, err)
		}
		res.logf("%-32s %8.3f s", what, d.Seconds())
		return d.Seconds()
	}

	// Pulls: direct first (the floor), then each proxy cold and warm. Each
	// proxy's cold pull is the only load on the machine while it runs. A
	// cold pull happens once per instance, so later rounds use fresh
	// instances; the best round counts, as for the hot tests.
	cold, warm, coldCPU := map[string]float64{}, map[string]float64{}, map[string]float64{}
	coldGETs := map[string]float64{}
	best := func(m map[string]float64, col string, v float64) {
		if old, ok := m[col]; !ok || v < old {
			m[col] = v
		}
	}
	for round := 1; round <= res.rounds; round++ {
		d, err := pull(ctx, s[colDirect].URL(""), c.images)
		best(cold, colDirect, mustDur(fmt.Sprintf("cold pull direct (round %d)", round), d, err))
		d, err = pull(ctx, s[colDirect].URL(""), c.images)
		best(warm, colDirect, mustDur(fmt.Sprintf("warm pull direct (round %d)", round), d, err))
		// The tee proxy keeps nothing it could serve: every pull is cold.
		cpu0 := cpuSeconds(b, s[colTee].Proc)
		d, err = pull(ctx, s[colTee].URL(""), c.images)
		best(coldCPU, colTee, cpuSeconds(b, s[colTee].Proc)-cpu0)
		best(cold, colTee, mustDur(fmt.Sprintf("cold pull tee proxy (round %d)", round), d, err))
		for _, p := range proxies {
			srv := s[p]
			if round > 1 {
				srv = fresh[p](fmt.Sprintf("%s-cold%d", p, round))
			}
			before := settledBlobGETs(b, s[colDirect], pullDigests)
			cpu0 := cpuSeconds(b, srv.Proc)
			d, err := pull(ctx, srv.URL(""), c.images)
			best(coldCPU, p, cpuSeconds(b, srv.Proc)-cpu0)
			best(cold, p, mustDur(fmt.Sprintf("cold pull %s (round %d)", p, round), d, err))
			if round == 1 {
				after := settledBlobGETs(b, s[colDirect], pullDigests)
				coldGETs[p] = float64(sum(after)-sum(before)) / float64(len(pullDigests))
			}
			d, err = pull(ctx, srv.URL(""), c.images)
			best(warm, p, mustDur(fmt.Sprintf("warm pull %s (round %d)", p, round), d, err))
			if round > 1 {
				srv.Stop()
			}
		}
	}

	// 32 simultaneous cold requests of one blob.
	fan := map[string]float64{}
	fanDigest := []string{c.fanout.layers[0].digest}
	for _, p := range proxies {
		before := settledBlobGETs(b, s[colDirect], fanDigest)
		if err := fanout(ctx, s[p].URL(""), c.fanout); err != nil {
			b.Fatalf("fan-out %s: %v", p, err)
		}
		after := settledBlobGETs(b, s[colDirect], fanDigest)
		fan[p] = float64(sum(after) - sum(before))
		res.logf("%-32s %8.0f upstream GETs", "32 cold GETs of 1 blob "+p, fan[p])
	}

	// Hot blobs, then hot manifests: each measurement is repeated in
	// interleaved rounds over the columns and the best round counts, so a
	// burst of unrelated load on the machine hurts no column alone.
	hot := map[int64]map[string]float64{}
	for _, size := range []int64{1 * mib, 64 * mib} {
		im, bl := c.layerOfSize(size)
		hot[size] = map[string]float64{}
		for round := 1; round <= res.rounds; round++ {
			for _, col := range columns {
				url := s[col].URL(im.blobPath(bl.digest))
				if col == colNginx {
					url = s[col].URL(nginxBlobPath(bl.digest))
				}
				t, err := hotBlob(ctx, url, size, res.hotDuration)
				if err != nil {
					b.Fatalf("hot blob %s %s: %v", humanSize(int(size)), col, err)
				}
				hot[size][col] = max(hot[size][col], t.gibps())
				res.logf("%-32s %8.2f GiB/s (%d responses, round %d)", fmt.Sprintf("hot blob %s %s", humanSize(int(size)), col), t.gibps(), t.reqs, round)
			}
		}
	}

	// Hot manifests, by digest and by tag; nginx serves the same bytes as a
	// file, measured once (it has no tags).
	im := c.images[0]
	size := int64(len(im.manifest))
	rps := map[string]map[string]float64{"digest": {}, "tag": {}}
	p99 := map[string]map[string]float64{"digest": {}, "tag": {}}
	for _, kind := range []string{"digest", "tag"} {
		for round := 1; round <= res.rounds; round++ {
			for _, col := range columns {
				var url string
				switch {
				case col == colNginx && kind == "tag":
					continue
				case col == colNginx:
					url = s[col].URL(nginxManifestPath)
				case kind == "digest":
					url = s[col].URL(im.manifestPath(im.manifestDigest))
				default:
					url = s[col].URL(im.manifestPath(im.tag))
				}
				r, err := hotManifest(ctx, url, size, res.hotDuration)
				if err != nil {
					b.Fatalf("hot manifest by %s %s: %v", kind, col, err)
				}
				if r.perSec() > rps[kind][col] {
					rps[kind][col] = r.perSec()
					p99[kind][col] = float64(r.p99.Microseconds()) / 1000
				}
				res.logf("%-32s %8.0f req/s p50 %v p99 %v (round %d)", "manifest by "+kind+" "+col, r.perSec(), r.p50, r.p99, round)
			}
		}
	}
	rps["tag"][colNginx], p99["tag"][colNginx] = rps["digest"][colNginx], p99["digest"][colNginx]

	// Peak memory of the cache servers (the upstream's includes the pushes).
	rss := map[string]float64{}
	for _, col := range []string{colOutpost, colPeer, colDirect} {
		v, err := peakRSS(s[col].Proc)
		if err != nil {
			b.Fatalf("peak RSS of %s: %v", col, err)
		}
		rss[col] = float64(v) / mib
	}

	res.add("Cold pull (s)", "%.3f", "≤ 1.2x direct", cold, ratioAtMost(colDirect, 1.2))
	res.add("Server CPU during the cold pull (s)", "%.3f", "", coldCPU, nil)
	res.add("Warm pull (s)", "%.3f", "", warm, nil)
	res.add("Hot blob 1 MiB, 32 conns (GiB/s)", "%.2f", "≥ 0.9x nginx", hot[1*mib], ratioAtLeast(colNginx, 0.9))
	res.add("Hot blob 64 MiB, 32 conns (GiB/s)", "%.2f", "≥ 0.9x nginx", hot[64*mib], ratioAtLeast(colNginx, 0.9))
	res.add("Manifest by digest (req/s)", "%.0f", "≥ 0.6x nginx", rps["digest"], ratioAtLeast(colNginx, 0.6))
	res.add("Manifest by digest p99 (ms)", "%.2f", "", p99["digest"], nil)
	res.add("Manifest by tag (req/s)", "%.0f", "≥ 0.6x nginx", rps["tag"], ratioAtLeast(colNginx, 0.6))
	res.add("Manifest by tag p99 (ms)", "%.2f", "", p99["tag"], nil)
	res.add("Upstream GETs per blob, cold pull", "%.2f", "1", coldGETs, valueAtMost(1))
	res.add("Upstream GETs, 32 concurrent cold GETs of 1 blob", "%.0f", "1", fan, valueAtMost(1))
	res.add("Peak RSS (MiB)", "%.1f", "< 64 MiB", rss, valueBelow(64))

	b.ReportMetric(cold[colOutpost], "cold-pull-s")
	b.ReportMetric(warm[colOutpost], "warm-pull-s")
	b.ReportMetric(hot[64*mib][colOutpost], "blob64M-GiB/s")
	b.ReportMetric(rps["digest"][colOutpost], "manifest-digest-req/s")
	b.ReportMetric(rps["tag"][colOutpost], "manifest-tag-req/s")
	b.ReportMetric(rss[colOutpost], "peak-RSS-MiB")
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// outpostVersion names the source tree that was built (read-only git).
func outpostVersion(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "(uncommitted tree)"
	}
	return strings.TrimSpace(string(out))
}
