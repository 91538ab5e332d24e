package packaging

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
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

// deadPort is a closed loopback port: every proxy variable of the processes
// the tests start points here, so nothing can reach the internet by accident.
const deadPort = "127.0.0.1:9"

// baseDir holds everything one `go test` run creates (packages, chroot, logs).
var baseDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	d, err := os.MkdirTemp("", "outpost-pkgtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		return 1
	}
	baseDir = d
	code := m.Run()
	if mounts := mountsUnder(baseDir); len(mounts) > 0 {
		// Never RemoveAll through a mount point (it could reach /proc or /sys).
		fmt.Fprintf(os.Stderr, "packaging: mounts left under %s, not removing it: %v\n", baseDir, mounts)
		return 1
	}
	if err := os.RemoveAll(baseDir); err != nil {
		fmt.Fprintln(os.Stderr, "packaging: cleanup:", err)
	}
	return code
}

// mountsUnder lists the mount points of this mount namespace below dir.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
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

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root")
	}
}

var goBinDirs = sync.OnceValue(func() []string {
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, p := range filepath.SplitList(strings.TrimSpace(string(out))) {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	return dirs
})

// findTool looks in the Go bin directories first (nfpm, registry), then on
// PATH and in the sbin directories (debootstrap is in /usr/sbin).
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
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// requireTool returns the path of an external program, or skips/fails.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, ok := findTool(name)
	if !ok {
		missing(t, "%s not found (run scripts/install-packaging-deps.sh)", name)
	}
	return p
}

var repoRoot = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the outpost module")
	}
	return filepath.Dir(mod), nil
})

func root(t *testing.T) string {
	t.Helper()
	r, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// testEnv is the environment of the processes the tests start: the caller's
// with all proxies pointing at the dead port and the Go bin dirs on PATH.
func testEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "PATH":
			continue
		}
		env = append(env, kv)
	}
	path := strings.Join(append(goBinDirs(), os.Getenv("PATH"), "/usr/sbin", "/sbin"), string(os.PathListSeparator))
	proxy := "http://" + deadPort
	env = append(env, "PATH="+path,
		"HTTP_PROXY="+proxy, "HTTPS_PROXY="+proxy, "http_proxy="+proxy, "https_proxy="+proxy,
		"NO_PROXY=127.0.0.1,localhost,::1", "no_proxy=127.0.0.1,localhost,::1")
	return append(env, extra...)
}

// runCmd runs a command to completion (bounded by timeout) and returns its
// combined output.
func runCmd(timeout time.Duration, dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %s", name, timeout)
	}
	return buf.String(), err
}

// runOut runs a command to completion (bounded by timeout) and returns its
// standard output and standard error separately.
func runOut(timeout time.Duration, env []string, name string, args ...string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s: timed out after %s", name, timeout)
	}
	return stdout.Bytes(), stderr.String(), err
}

// mustOutput runs a command, fails the test unless it exits 0, and returns
// its standard output.
func mustOutput(t *testing.T, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	out, stderr, err := runOut(timeout, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr)
	}
	return string(out)
}

// mustRun runs a command and fails the test unless it exits 0.
func mustRun(t *testing.T, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runCmd(timeout, "", env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// proc is a background process started by a test and stopped at its end.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts a process in its own process group, logging to logPath.
// The group is terminated when the test ends; on failure the log is printed.
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
			t.Logf("---- %s log (%s) ----\n%s", name, logPath, tail(logPath, 40))
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

// stop sends SIGTERM to the process group, then SIGKILL after 10 s, and
// returns the process's exit error.
func (p *proc) stop() error {
	if !p.exited() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	return p.err
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// httpClient talks to loopback servers only and never uses a proxy.
var httpClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableCompression: true},
	Timeout:   60 * time.Second,
}

// waitHTTP polls url until it answers 200 (at most timeout), failing early if
// the process p exits.
func waitHTTP(t *testing.T, p *proc, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			t.Fatalf("%s exited before %s answered (%v):\n%s", p.name, url, p.err, tail(p.log, 30))
		}
		resp, err := httpClient.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 within %s (last: %s)", url, timeout, last)
}

// elfInfo reports the machine of an ELF file and whether it is statically
// linked (no program interpreter).
func elfInfo(t *testing.T, path string) (elf.Machine, bool) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	static := true
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			static = false
		}
	}
	return f.Machine, static
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ociManifest is the part of an image manifest the pull check needs.
type ociManifest struct {
	MediaType string          `json:"mediaType"`
	Config    ociDescriptor   `json:"config"`
	Layers    []ociDescriptor `json:"layers"`
}

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

const manifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"

// pullVerify pulls repo:ref through the registry at base (http://host:port)
// the way a client does (GET manifest, GET every blob) and checks every
// digest and size against want (the manifest digest pushed upstream). It
// returns the number of blob bytes received.
func pullVerify(t *testing.T, base, repo, ref, want string) int64 {
	t.Helper()
	get := func(path, accept string) ([]byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: reading body: %v", path, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
		}
		return body, resp.Header
	}
	raw, h := get("/v2/"+repo+"/manifests/"+ref, manifestAccept)
	if got := "sha256:" + sha256Hex(raw); got != want {
		t.Fatalf("manifest %s:%s: body digest %s, want %s", repo, ref, got, want)
	}
	if got := h.Get("Docker-Content-Digest"); got != want {
		t.Fatalf("manifest %s:%s: Docker-Content-Digest %q, want %s", repo, ref, got, want)
	}
	var m ociManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("manifest %s:%s: %v", repo, ref, err)
	}
	if len(m.Layers) == 0 || m.Config.Digest == "" {
		t.Fatalf("manifest %s:%s has no config/layers: %s", repo, ref, raw)
	}
	var total int64
	for _, d := range append([]ociDescriptor{m.Config}, m.Layers...) {
		b, _ := get("/v2/"+repo+"/blobs/"+d.Digest, "")
		if got := "sha256:" + sha256Hex(b); got != d.Digest {
			t.Fatalf("blob %s: content digest %s", d.Digest, got)
		}
		if int64(len(b)) != d.Size {
			t.Fatalf("blob %s: %d bytes, manifest says %d", d.Digest, len(b), d.Size)
		}
		total += int64(len(b))
	}
	return total
}
