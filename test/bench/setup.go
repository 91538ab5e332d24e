package bench

// setup.go starts and stops the servers under test: the upstream registry,
// the peer (a CNCF distribution registry in proxy mode), Outpost itself and
// nginx. Every process listens on 127.0.0.1 only, runs in its own process
// group and is killed when the benchmark ends.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// distributionModule is the CNCF distribution registry used as upstream
	// and peer; scripts/install-bench-deps.sh installs exactly this version.
	distributionModule = "github.com/distribution/distribution/v3/cmd/registry@v3.1.2"

	readyTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// server is one running process under test.
type server struct {
	name    string
	url     string // http://127.0.0.1:PORT
	cmd     *exec.Cmd
	stdout  string // file receiving the process's stdout
	stderr  string // file receiving the process's stderr
	exited  chan struct{}
	waitErr error
}

// findTool returns the path of a required external program. A missing tool
// skips the benchmark locally and fails it in CI (CI=true).
func findTool(tb testing.TB, name string, extra ...string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range extra {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found; run scripts/install-bench-deps.sh", name)
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

// registryBinary locates the distribution v3 `registry` binary: GOBIN or
// GOPATH/bin (where scripts/install-bench-deps.sh puts it) first, then PATH.
func registryBinary(tb testing.TB) string {
	tb.Helper()
	var candidates []string
	for _, v := range []string{"GOBIN", "GOPATH"} {
		out, err := exec.Command("go", "env", v).Output()
		if err != nil {
			continue
		}
		for _, d := range filepath.SplitList(strings.TrimSpace(string(out))) {
			if v == "GOPATH" {
				d = filepath.Join(d, "bin")
			}
			candidates = append(candidates, filepath.Join(d, "registry"))
		}
	}
	if p, err := exec.LookPath("registry"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		out, err := exec.Command(p, "--version").Output()
		if err == nil && strings.Contains(string(out), "distribution/v3") {
			return p
		}
	}
	return findTool(tb, "registry (distribution v3)")
}

// moduleRoot returns the directory holding Outpost's go.mod.
func moduleRoot(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		tb.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		tb.Fatal("not inside the Outpost module")
	}
	return filepath.Dir(gomod)
}

// buildOutpost compiles ./cmd/outpost into dir and returns the binary path.
func buildOutpost(tb testing.TB, root, dir string) string {
	tb.Helper()
	bin := filepath.Join(dir, "bin", "outpost")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/outpost")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("building outpost: %v\n%s", err, out)
	}
	return bin
}

// freePort asks the kernel for an unused loopback port.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start launches a server process and waits until readyPath answers 200.
// The process is stopped by tb.Cleanup.
func start(tb testing.TB, name string, port int, readyPath, logDir string, bin string, args ...string) *server {
	tb.Helper()
	s := &server{
		name:   name,
		url:    "http://127.0.0.1:" + strconv.Itoa(port),
		stdout: filepath.Join(logDir, name+".stdout.log"),
		stderr: filepath.Join(logDir, name+".stderr.log"),
		exited: make(chan struct{}),
	}
	outF, err := os.Create(s.stdout)
	if err != nil {
		tb.Fatal(err)
	}
	errF, err := os.Create(s.stderr)
	if err != nil {
		tb.Fatal(err)
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = outF, errF
	s.cmd.Env = safeEnv()
	s.cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // own process group: stop() kills helpers too
		Pdeathsig: syscall.SIGKILL, // die with the benchmark binary
	}
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		outF.Close()
		errF.Close()
		close(s.exited)
	}()
	tb.Cleanup(s.stop)

	if err := waitReady(s, s.url+readyPath, readyTimeout); err != nil {
		tb.Fatalf("%s not ready: %v\n--- stderr tail:\n%s", name, err, tail(s.stderr, 20))
	}
	return s
}

// safeEnv is the environment for child processes: any attempt to reach a
// non-loopback address through a proxy-aware client fails fast.
func safeEnv() []string {
	env := os.Environ()
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		env = append(env, k+"=http://127.0.0.1:9")
	}
	env = append(env, "NO_PROXY=127.0.0.1,localhost,::1", "no_proxy=127.0.0.1,localhost,::1")
	// distribution v3 exports OpenTelemetry traces to localhost:4318 by
	// default; the same switches apply to every server under test.
	env = append(env, "OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none")
	return env
}

// waitReady polls url until it answers 200, the process exits, or timeout.
func waitReady(s *server, url string, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("exited early: %v", s.waitErr)
		default:
		}
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("timeout after " + timeout.String())
}

// stop ends the process group: SIGTERM, then SIGKILL after stopTimeout.
func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.exited
	}
	// Reap stragglers (nginx workers) that outlived their master.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// peakRSS reads VmHWM (peak resident set size) of the server's main process.
func (s *server) peakRSS() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
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

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// startUpstream runs the distribution registry that holds the corpus. Its
// access log (stdout) is what countBlobGETs reads.
func startUpstream(tb testing.TB, bin, dir string) *server {
	port := freePort(tb)
	cfg := filepath.Join(dir, "upstream", "config.yml")
	writeFile(tb, cfg, fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:%d
  secret: bench-upstream
`, filepath.Join(dir, "upstream", "data"), port))
	return start(tb, "upstream", port, "/v2/", dir, bin, "serve", cfg)
}

// startDistributionProxy runs a distribution registry in proxy mode in front
// of upstreamURL: the peer (and, with OUTPOST_BENCH_PLACEHOLDER=1, the
// stand-in for Outpost). The upstream must already answer /v2/: a proxy
// registry panics at start if it cannot reach its remote.
func startDistributionProxy(tb testing.TB, name, bin, dir, upstreamURL string) *server {
	port := freePort(tb)
	cfg := filepath.Join(dir, name, "config.yml")
	writeFile(tb, cfg, fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:%d
  secret: bench-%s
proxy:
  remoteurl: %s
`, filepath.Join(dir, name, "data"), port, name, upstreamURL))
	return start(tb, name, port, "/v2/", dir, bin, "serve", cfg)
}

// startOutpost runs the Outpost binary with the upstream as default upstream.
func startOutpost(tb testing.TB, bin, dir, upstreamURL string) *server {
	port := freePort(tb)
	cfg := filepath.Join(dir, "outpost", "config.yml")
	writeFile(tb, cfg, fmt.Sprintf(`http:
  address: 127.0.0.1:%d
storage:
  root: %s
log:
  level: warn
upstreams:
  - name: docker.io
    urls: [%s]
    insecure: true
    default: true
    tagTTL: 5m
`, port, filepath.Join(dir, "outpost", "data"), upstreamURL))
	return start(tb, "outpost", port, "/v2/", dir, bin, "serve", "--config", cfg)
}

// startNginx serves docroot (blob files and one manifest-sized file) with
// sendfile: the practical limit for serving files from disk. One worker per
// CPU; reuseport spreads the connections over the workers (without it one
// worker tends to accept them all). tcp_nopush is left off: it measured no
// faster here.
func startNginx(tb testing.TB, bin, dir, docroot string) *server {
	port := freePort(tb)
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
	writeFile(tb, cfg, fmt.Sprintf(`%s
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
        listen 127.0.0.1:%[4]d reuseport;
        root %[5]s;
        location = /v2/ { return 200 "{}"; }
    }
}
`, user, runtime.NumCPU(), prefix, port, docroot))
	return start(tb, "nginx", port, "/v2/", dir, bin, "-p", prefix, "-e", filepath.Join(prefix, "logs", "error.log"), "-c", cfg)
}

// upstreamBlobGETs counts, in the upstream's access log, the GET requests
// for each of the given blob digests (any repository, any status).
func upstreamBlobGETs(tb testing.TB, up *server, digests []string) map[string]int {
	tb.Helper()
	data, err := os.ReadFile(up.stdout)
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
func settledBlobGETs(tb testing.TB, up *server, digests []string) map[string]int {
	tb.Helper()
	var last int64 = -1
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		st, err := os.Stat(up.stdout)
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
