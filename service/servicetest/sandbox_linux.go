package servicetest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

const sandboxEnv = "OUTPOST_SERVICETEST_SANDBOX"

// Sandbox re-runs the calling top-level test in a child process with its own
// mount namespace, where /etc and /run are overlays whose changes land in a
// temporary directory and vanish with it. It returns true in the child, which
// goes on with the test, and false in the parent once the child has passed
// (the child's output is logged). It needs root; without it the test is
// skipped (failed under CI=true).
func Sandbox(t *testing.T) bool {
	t.Helper()
	if os.Getenv(sandboxEnv) != "" {
		enterSandbox(t)
		return true
	}
	Require(t, os.Geteuid() == 0, "the /etc overlay sandbox needs root")
	dir := t.TempDir()
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), sandboxEnv+"="+dir, sandboxEnv+"_PARENT_NS="+ns)
	// Go makes / recursively private in the new namespace before exec, so
	// nothing mounted in the child propagates back to the host.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("sandboxed run:\n%s", out)
	if err != nil {
		t.Fatalf("sandboxed run failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatal("sandboxed run did not pass (skipped or not run)")
	}
	return false
}

func enterSandbox(t *testing.T) {
	dir := os.Getenv(sandboxEnv)
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil || ns == os.Getenv(sandboxEnv+"_PARENT_NS") {
		t.Fatalf("not in a new mount namespace (%s, %v): refusing to touch /etc", ns, err)
	}
	for _, target := range []string{"/etc", "/run"} {
		upper := filepath.Join(dir, "upper"+target)
		work := filepath.Join(dir, "work"+target)
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		opts := "lowerdir=" + target + ",upperdir=" + upper + ",workdir=" + work
		if err := syscall.Mount("overlay", target, "overlay", 0, opts); err != nil {
			t.Fatalf("overlay on %s: %v", target, err)
		}
	}
}
