package main

import (
	"bytes"
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

// process is the outpost command running as a child process.
type process struct {
	cmd  *exec.Cmd
	addr string
	root string
	out  *syncBuffer
	done chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess writes cfgYAML (with %ROOT% and %ADDR% filled in) and runs
// `outpost serve --config` on it as a child process.
func startProcess(t *testing.T, cfgYAML, root string) (*process, string) {
	t.Helper()
	if root == "" {
		root = t.TempDir()
	}
	addr := freePort(t)
	cfgYAML = strings.ReplaceAll(strings.ReplaceAll(cfgYAML, "%ROOT%", root), "127.0.0.1:0", addr)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return runProcess(t, path, addr, root), path
}

// restartProcess runs `outpost serve` again on the config file a
// startProcess wrote.
func restartProcess(t *testing.T, path, root string) *process {
	t.Helper()
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(cfg), `address: "`)
	addr, _, _ := strings.Cut(rest, `"`)
	return runProcess(t, path, addr, root)
}

func runProcess(t *testing.T, path, addr, root string) *process {
	t.Helper()
	p := &process{addr: addr, root: root, out: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], "serve", "--config", path)
	p.cmd.Env = append(os.Environ(), "OUTPOST_TEST_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("outpost output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("outpost did not come up:\n%s", p.out.String())
	return nil
}

// get fetches path from the process and returns the status.
func (p *process) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (p *process) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(limit):
		t.Fatalf("outpost did not exit within %v", limit)
		return nil
	}
}

// SIGTERM during a cold pull: the in-flight response finishes, the process
// exits 0, and the store is consistent.
func TestSIGTERMDuringColdPull(t *testing.T) {
	up := newUpstream(t)
	layer, d := up.pushLayer("acme/app", 2<<20)
	up.setFault(faultSlow) // about 1 s for 2 MiB
	p, _ := startProcess(t, config(up, "1h"), "")

	type result struct {
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + p.addr + "/v2/acme/app/blobs/" + d.String())
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		got <- result{n, err}
	}()
	time.Sleep(500 * time.Millisecond) // mid-download
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	r := <-got
	size, _ := layer.Size()
	if r.err != nil || r.n != size {
		t.Errorf("in-flight response: %d of %d bytes, %v", r.n, size, r.err)
	}
	checkStore(t, p.root)
}

// A crash (SIGKILL) in the middle of a download leaves nothing half
// visible: the next start cleans up and the store checks out.
func TestKillDuringColdPullLeavesStoreConsistent(t *testing.T) {
	up := newUpstream(t)
	_, d := up.pushLayer("acme/app", 2<<20)
	up.setFault(faultSlow)
	p, _ := startProcess(t, config(up, "1h"), "")
	go func() {
		if resp, err := http.Get("http://" + p.addr + "/v2/acme/app/blobs/" + d.String()); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	time.Sleep(500 * time.Millisecond)
	if entries, _ := os.ReadDir(filepath.Join(p.root, ".sync")); len(entries) == 0 {
		t.Fatal("no staging session while downloading: the kill would prove nothing")
	}
	p.cmd.Process.Kill()
	p.wait(t, 5*time.Second)
	if blobFileExists(p.root, d) {
		t.Fatal("a blob whose download was killed is visible")
	}
	checkStore(t, p.root) // opens the store: the sweep runs, then the invariants
	if entries, _ := os.ReadDir(filepath.Join(p.root, ".sync")); len(entries) != 0 {
		t.Errorf("staging sessions left after restart: %v", entries)
	}
}

// SIGHUP with a broken config file keeps the running config, with a clear
// log line; a good file is applied.
func TestSIGHUPReload(t *testing.T) {
	first, second := newUpstream(t), newUpstream(t)
	d1 := first.push("acme/app", "1", randomImage(t, 100, 1))
	d2 := second.push("acme/app", "1", randomImage(t, 100, 1))
	p, path := startProcess(t, strings.Replace(config(first, "0s"), "level: error", "level: info", 1), "")
	digest := func() string {
		resp, err := http.Get("http://" + p.addr + "/v2/acme/app/manifests/1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get("Docker-Content-Digest")
	}
	if digest() != d1.String() {
		t.Fatal("wrong digest before reload")
	}
	good, _ := os.ReadFile(path)
	os.WriteFile(path, []byte("http:\n  adress: oops\n"), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(p.out.String(), "config reload refused") })
	if !strings.Contains(p.out.String(), `unknown field \"adress\"`) && !strings.Contains(p.out.String(), `unknown field "adress"`) {
		t.Errorf("the refusal does not say what is wrong:\n%s", p.out.String())
	}
	if got := digest(); got != d1.String() {
		t.Fatalf("after a bad reload: %s, want %s", got, d1)
	}
	os.WriteFile(path, bytes.ReplaceAll(good, []byte(first.srv.URL), []byte(second.srv.URL)), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(p.out.String(), "config reloaded") })
	if got := digest(); got != d2.String() {
		t.Fatalf("after reload: %s, want %s", got, d2)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("condition not met within 5 s")

}

// Credentials and tokens never appear in the logs, even at debug level.
func TestLogsCarryNoCredentials(t *testing.T) {
	const password, token = "pa55-word-xyz", "tok-secret-123"
	up := newUpstream(t)
	up.wrap = func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				if u, p, ok := r.BasicAuth(); !ok || u != "bot" || p != password {
					http.Error(w, "bad credentials", http.StatusUnauthorized)
					return
				}
				fmt.Fprintf(w, `{"token":%q}`, token)
				return
			}
			if r.Method == http.MethodGet && r.Header.Get("Authorization") != "Bearer "+token {
				w.Header().Set("WWW-Authenticate", `Bearer realm="`+up.srv.URL+`/token",service="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
			reg.ServeHTTP(w, r)
		})
	}
	wrap := up.wrap
	up.wrap = nil // seed without auth
	img := randomImage(t, 1000, 1)
	up.push("acme/app", "1", img)
	up.wrap = wrap

	passFile := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(passFile, []byte(password+"\n"), 0o600)
	cfg := strings.Replace(config(up, "0s"), "level: error, format: text", "level: debug, format: json", 1) +
		"    username: bot\n    passwordFile: " + passFile + "\n"
	p, _ := startProcess(t, cfg, "")
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	for _, path := range []string{"/v2/acme/app/manifests/1", "/v2/acme/app/blobs/" + d.String()} {
		resp, err := http.Get("http://" + p.addr + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s through an authenticated upstream: %v %v", path, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, 10*time.Second)
	logs := p.out.String()
	if !strings.Contains(logs, `"msg":"request"`) {
		t.Fatalf("no JSON access lines in the logs:\n%s", logs)
	}
	for _, secret := range []string{password, token, "Authorization", "Bearer "} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q", secret)
		}
	}
}

// SIGTERM while a response streams a download that outlasts the grace
// period: the download is stopped and discarded, the response cut, and the
// process still exits 0 (a normal stop for systemd) with a consistent store.
func TestSIGTERMCutsLongDownloadsAndExitsZero(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the 10 s shutdown grace period")
	}
	up := newUpstream(t)
	_, d := up.pushLayer("acme/app", 4<<20)
	up.setFault(faultTrickle) // 4 MiB at 128 KiB/s: 32 s
	p, _ := startProcess(t, config(up, "1h"), "")
	got := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + p.addr + "/v2/acme/app/blobs/" + d.String())
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		got <- err
	}()
	time.Sleep(time.Second)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 20*time.Second); err != nil {
		t.Fatalf("exit after a cut download: %v", err)
	}
	if took := time.Since(start); took > 14*time.Second {
		t.Errorf("stopping took %v", took)
	}
	if err := <-got; err == nil {
		t.Error("the cut response looked complete to the client")
	}
	if blobFileExists(p.root, d) {
		t.Error("a download stopped half way was stored")
	}
	checkStore(t, p.root)
}
