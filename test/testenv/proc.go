package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DeadAddr is a closed loopback port. Proxy variables of every started
// process point here, so a client that bypasses the mirror under test
// fails fast instead of reaching the internet.
const DeadAddr = "127.0.0.1:9"

// Env is the environment for every process a test starts: the caller's,
// with all proxy settings pointing at DeadAddr, OpenTelemetry export off
// (distribution v3 would send traces to localhost:4318), plus extra.
func Env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
			continue
		}
		env = append(env, kv)
	}
	proxy := "http://" + DeadAddr
	env = append(env,
		"HTTP_PROXY="+proxy, "HTTPS_PROXY="+proxy, "http_proxy="+proxy, "https_proxy="+proxy,
		"NO_PROXY=127.0.0.1,localhost,::1", "no_proxy=127.0.0.1,localhost,::1",
		"OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none")
	return append(env, extra...)
}

// Proc is a background process started by a test and stopped at its end.
type Proc struct {
	Name string
	Log  string // stdout and stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start runs bin in its own process group (so Stop also ends its helpers)
// with output going to logPath. The group is stopped when the test ends,
// and on failure the log tail is printed.
func Start(tb testing.TB, name, logPath string, env []string, bin string, args ...string) *Proc {
	tb.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			tb.Logf("---- %s log (%s), last lines ----\n%s", name, logPath, Tail(logPath, 40))
		}
	})
	return p
}

// Pid is the process id, also the id of its process group.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (not its group).
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed when the process has exited; Err is then its exit error.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process exited (nil: status 0); valid once Done is closed.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after 10 s, and
// kills what is left of the group (e.g. nginx workers that outlived their
// master).
func (p *Proc) Stop() {
	pgid := p.Pid()
	if !p.Exited() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// WaitUntil polls check until it succeeds, p exits (p may be nil), or
// timeout passes; the last two fail the test.
func WaitUntil(tb testing.TB, p *Proc, timeout time.Duration, what string, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if p != nil && p.Exited() {
			tb.Fatalf("%s exited before %s (%v): %v\n%s", p.Name, what, p.err, err, Tail(p.Log, 40))
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitV2 waits up to 30 s until the registry API at addr answers (see PingV2).
func (p *Proc) WaitV2(tb testing.TB, addr string) {
	tb.Helper()
	WaitUntil(tb, p, 30*time.Second, p.Name+" /v2/", func() error { return PingV2(addr) })
}

// Tail returns the last n lines of a file, long lines clipped.
func Tail(path string, n int) string {
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

// Result is the outcome of a finished command.
type Result struct {
	Stdout, Stderr []byte
	Elapsed        time.Duration
	Err            error
}

func (r Result) String() string {
	return fmt.Sprintf("err=%v elapsed=%s\nstdout:\n%s\nstderr:\n%s", r.Err, r.Elapsed, r.Stdout, r.Stderr)
}

// Run runs a command to completion, killing its process group after timeout.
func Run(timeout time.Duration, env []string, bin string, args ...string) Result {
	return RunIn("", timeout, env, bin, args...)
}

// RunIn is Run in the working directory dir.
func RunIn(dir string, timeout time.Duration, env []string, bin string, args ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Elapsed: time.Since(start), Err: err}
	if ctx.Err() != nil {
		res.Err = fmt.Errorf("killed after %s: %w", timeout, errors.Join(err, ctx.Err()))
	}
	return res
}

// MustRun is Run that fails the test if the command does not succeed.
func MustRun(tb testing.TB, timeout time.Duration, env []string, bin string, args ...string) Result {
	tb.Helper()
	res := Run(timeout, env, bin, args...)
	if res.Err != nil {
		tb.Fatalf("%s %s: %s", filepath.Base(bin), strings.Join(args, " "), res)
	}
	return res
}
