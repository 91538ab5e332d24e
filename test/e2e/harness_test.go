package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// deadPort is a closed loopback port. Every "real registry" location and every
// proxy variable points here, so a client that bypasses the mirror fails fast
// instead of reaching the internet.
const deadPort = "127.0.0.1:9"

var (
	// outpostBin is the outpost binary built by TestMain.
	outpostBin string
	// buildErr is why outpostBin could not be built.
	buildErr error
	// standIn replaces outpost with a distribution proxy (harness self-check).
	standIn = os.Getenv("OUTPOST_E2E_STANDIN") == "distribution"
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "outpost-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if !standIn {
		outpostBin, buildErr = buildOutpost(dir)
	}
	return m.Run()
}

// buildOutpost compiles ./cmd/outpost of the enclosing module into dir.
func buildOutpost(dir string) (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	bin := filepath.Join(dir, "outpost")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/outpost")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/outpost in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// requireOutpost returns the outpost binary or fails the test if it did not build.
func requireOutpost(t *testing.T) string {
	t.Helper()
	if standIn {
		t.Skip("tests Outpost-specific behaviour; skipped with OUTPOST_E2E_STANDIN")
	}
	if buildErr != nil {
		t.Fatalf("outpost binary: %v", buildErr)
	}
	return outpostBin
}

func inCI() bool { return os.Getenv("CI") == "true" }

// missing skips the test locally and fails it in CI.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf(format+" (CI=true: required)", args...)
	}
	t.Skipf(format, args...)
}

var goBinDirs = sync.OnceValue(func() []string {
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		for _, p := range filepath.SplitList(strings.TrimSpace(string(out))) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	return dirs
})

// findTool looks for an executable in the Go bin directories (where
// scripts/install-test-deps.sh puts registry and crane at pinned versions),
// then on PATH.
func findTool(name string) (string, bool) {
	for _, d := range goBinDirs() {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	return "", false
}

// requireTool returns the path of an external program, or skips/fails.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, ok := findTool(name)
	if !ok {
		missing(t, "%s not found on PATH or in GOPATH/bin (scripts/install-test-deps.sh installs it)", name)
	}
	return p
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root")
	}
}

// clientEnv is the environment for every process the tests start: the
// caller's environment with all proxy settings pointing at the dead port.
func clientEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
			continue
		}
		env = append(env, kv)
	}
	proxy := "http://" + deadPort
	env = append(env,
		"HTTP_PROXY="+proxy, "HTTPS_PROXY="+proxy, "http_proxy="+proxy, "https_proxy="+proxy,
		"NO_PROXY=127.0.0.1,localhost,::1", "no_proxy=127.0.0.1,localhost,::1")
	return append(env, extra...)
}

// httpClient talks to loopback servers only and never uses a proxy.
var httpClient = &http.Client{
	Transport: &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
	},
	Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a background process started by a test and stopped at its end.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts bin in its own process group with output going to logPath.
// The process group is terminated when the test ends; on failure the log tail
// is printed.
func startProc(t *testing.T, name, logPath string, env []string, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- %s log (%s), last lines ----\n%s", name, logPath, tail(logPath, 40))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 500 {
			lines[i] = l[:500] + "…"
		}
	}
	return strings.Join(lines, "\n")
}

// waitUntil polls check until it succeeds, p exits, or timeout passes.
func waitUntil(t *testing.T, p *proc, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if p != nil && p.exited() {
			t.Fatalf("%s exited before %s (%v): %v\n%s", p.name, what, p.err, err, tail(p.log, 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pingV2 checks that GET /v2/ answers 200 with the distribution API header.
func pingV2(addr string) error {
	resp, err := httpClient.Get("http://" + addr + "/v2/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v2/: status %d", resp.StatusCode)
	}
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		return fmt.Errorf("GET /v2/: Docker-Distribution-API-Version = %q", v)
	}
	return nil
}

// cmdResult is the outcome of a finished command.
type cmdResult struct {
	Stdout, Stderr []byte
	Elapsed        time.Duration
	Err            error
}

func (r cmdResult) String() string {
	return fmt.Sprintf("err=%v elapsed=%s\nstdout:\n%s\nstderr:\n%s", r.Err, r.Elapsed, r.Stdout, r.Stderr)
}

// runCmd runs a command to completion, killing its process group after timeout.
func runCmd(timeout time.Duration, env []string, bin string, args ...string) cmdResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := cmdResult{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Elapsed: time.Since(start), Err: err}
	if ctx.Err() != nil {
		res.Err = fmt.Errorf("killed after %s: %w", timeout, errors.Join(err, ctx.Err()))
	}
	return res
}

// mustRun runs a command and fails the test if it does not succeed.
func mustRun(t *testing.T, timeout time.Duration, env []string, bin string, args ...string) cmdResult {
	t.Helper()
	res := runCmd(timeout, env, bin, args...)
	if res.Err != nil {
		t.Fatalf("%s %s: %s", filepath.Base(bin), strings.Join(args, " "), res)
	}
	return res
}

// removeIfCreated removes path after the test if it (or an ancestor) does not
// exist now: the topmost missing ancestor is what the test run creates.
func removeIfCreated(t *testing.T, path string) {
	t.Helper()
	top := ""
	for p := filepath.Clean(path); p != "/" && p != "."; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		top = p
	}
	if top == "" {
		return
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(top); err != nil {
			t.Errorf("cleaning host side effect %s: %v", top, err)
		}
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
