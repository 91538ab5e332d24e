package bench

// setup.go starts the servers under test that testenv does not know: nginx,
// and the upstream registry, the peer (a CNCF distribution registry in proxy
// mode) and Outpost configured for the benchmark. Every process listens on
// 127.0.0.1 only, runs in its own process group and is killed when the
// benchmark ends (see testenv.Start).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// startUpstream runs the distribution registry that holds the corpus. Its
// access log is what upstreamBlobGETs reads.
func startUpstream(tb testing.TB, dir string) *testenv.Server {
	return testenv.StartRegistry(tb, filepath.Join(dir, "upstream"), testenv.RegistryOptions{AccessLog: true})
}

// startDistributionProxy runs a distribution registry in proxy mode in front
// of upstreamURL: the peer (and, with OUTPOST_BENCH_PLACEHOLDER=1, the
// stand-in for Outpost). The upstream must already answer /v2/: a proxy
// registry panics at start if it cannot reach its remote.
func startDistributionProxy(tb testing.TB, name, dir, upstreamURL string) *testenv.Server {
	return testenv.StartRegistry(tb, filepath.Join(dir, name), testenv.RegistryOptions{RemoteURL: upstreamURL})
}

// startOutpost runs Outpost with the upstream as default upstream.
func startOutpost(tb testing.TB, name, dir, upstreamURL string) *testenv.Server {
	return testenv.StartOutpost(tb, filepath.Join(dir, name), testenv.OutpostConfig{Upstreams: []testenv.Upstream{
		{Name: "docker.io", URL: upstreamURL, Default: true, TagTTL: "5m"},
	}})
}

// startNginx serves docroot (blob files and one manifest-sized file) with
// sendfile: the practical limit for serving files from disk. One worker per
// CPU; reuseport spreads the connections over the workers (without it one
// worker tends to accept them all). tcp_nopush is left off: it measured no
// faster here.
func startNginx(tb testing.TB, bin, dir, docroot string) *testenv.Server {
	addr := testenv.FreeAddr(tb)
	prefix := filepath.Join(dir, "nginx")
	for _, d := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers keep root's identity so they can read the private temp dir.
		user = "user root;"
	}
	cfg := filepath.Join(prefix, "nginx.conf")
	testenv.WriteFile(tb, cfg, fmt.Sprintf(`%s
daemon off;
master_process on;
worker_processes %d;
pid %[3]s/nginx.pid;
error_log %[3]s/logs/error.log warn;
events {
    worker_connections 1024;
}
http {
    default_type application/octet-stream;
    types {
        application/vnd.oci.image.manifest.v1+json json;
    }
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    open_file_cache max=1000 inactive=60s;
    client_body_temp_path %[3]s/tmp/body;
    proxy_temp_path %[3]s/tmp/proxy;
    fastcgi_temp_path %[3]s/tmp/fastcgi;
    uwsgi_temp_path %[3]s/tmp/uwsgi;
    scgi_temp_path %[3]s/tmp/scgi;
    server {
        listen %[4]s reuseport;
        root %[5]s;
        location = /v2/ {
            add_header Docker-Distribution-API-Version registry/2.0;
            return 200 "{}";
        }
    }
}
`, user, runtime.NumCPU(), prefix, addr, docroot))
	p := testenv.Start(tb, "nginx", filepath.Join(prefix, "nginx.log"), testenv.Env(), bin,
		"-p", prefix, "-e", filepath.Join(prefix, "logs", "error.log"), "-c", cfg)
	p.WaitV2(tb, addr) // /v2/ answers like a registry's
	return &testenv.Server{Proc: p, Addr: addr, Data: docroot}
}

// peakRSS reads VmHWM (peak resident set size) of a server's main process.
func peakRSS(p *testenv.Proc) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("VmHWM not found")
}

// cpuSeconds is the user and system CPU time a process has used so far.
func cpuSeconds(tb testing.TB, p *testenv.Proc) float64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
	if err != nil {
		tb.Fatal(err)
	}
	// The command may contain spaces; the fields after it start after ")".
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks: USER_HZ is 100 on Linux
}

// upstreamBlobGETs counts, in the upstream's access log, the GET requests
// for each of the given blob digests (any repository, any status).
func upstreamBlobGETs(tb testing.TB, up *testenv.Server, digests []string) map[string]int {
	tb.Helper()
	data, err := os.ReadFile(up.Log)
	if err != nil {
		tb.Fatal(err)
	}
	want := make(map[string]bool, len(digests))
	counts := make(map[string]int, len(digests))
	for _, d := range digests {
		want[d] = true
		counts[d] = 0
	}
	// Combined log format: ... "GET /v2/<repo>/blobs/<digest>[?query] HTTP/1.1" 200 ...
	for _, line := range strings.Split(string(data), "\n") {
		_, req, ok := strings.Cut(line, `"GET /v2/`)
		if !ok {
			continue
		}
		path, _, _ := strings.Cut(req, " ")
		path, _, _ = strings.Cut(path, "?")
		i := strings.LastIndex(path, "/blobs/")
		if i < 0 {
			continue
		}
		if d := path[i+len("/blobs/"):]; want[d] {
			counts[d]++
		}
	}
	return counts
}

// settledBlobGETs waits until the upstream's access log stops growing
// (requests are logged when they complete), then counts as upstreamBlobGETs.
func settledBlobGETs(tb testing.TB, up *testenv.Server, digests []string) map[string]int {
	tb.Helper()
	var last int64 = -1
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		st, err := os.Stat(up.Log)
		if err != nil {
			tb.Fatal(err)
		}
		if st.Size() == last {
			break
		}
		last = st.Size()
		time.Sleep(300 * time.Millisecond)
	}
	return upstreamBlobGETs(tb, up, digests)
}

// startTeeProxy builds and runs test/bench/teeproxy in front of upstreamURL:
// the floor column of the cold pull (see its package comment).
func startTeeProxy(tb testing.TB, root, dir, upstreamURL string) *testenv.Server {
	tb.Helper()
	prefix := filepath.Join(dir, "teeproxy")
	blobs := filepath.Join(prefix, "blobs")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		tb.Fatal(err)
	}
	bin := filepath.Join(prefix, "teeproxy")
	testenv.MustRun(tb, 5*time.Minute, append(testenv.Env(), "CGO_ENABLED=0"), "go", "build", "-C", root, "-o", bin, "./test/bench/teeproxy")
	addr := testenv.FreeAddr(tb)
	p := testenv.Start(tb, "teeproxy", filepath.Join(prefix, "teeproxy.log"), testenv.Env(), bin, "-listen", addr, "-upstream", upstreamURL, "-dir", blobs)
	p.WaitV2(tb, addr)
	return &testenv.Server{Proc: p, Addr: addr}
}
