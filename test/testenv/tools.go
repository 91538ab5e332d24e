package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips the test locally and fails it in CI: a missing tool or
// privilege must not let a CI run pass silently.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if InCI() {
		tb.Fatalf(format+" (CI=true: required)", args...)
	}
	tb.Skipf(format, args...)
}

// RequireRoot skips (or, in CI, fails) a test that needs root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Missing(tb, "needs root")
	}
}

// goBinDirs are GOBIN and every GOPATH/bin: where the scripts/install-*-deps.sh
// scripts `go install` registry and crane at pinned versions.
var goBinDirs = sync.OnceValue(func() []string {
	out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output()
	lines := strings.Split(string(out), "\n")
	if err != nil || len(lines) < 2 {
		return nil
	}
	dirs := []string{lines[0]} // GOBIN, often empty
	for _, p := range filepath.SplitList(lines[1]) {
		dirs = append(dirs, filepath.Join(p, "bin"))
	}
	return dirs
})

// candidates lists the executables called name, in the order they are
// preferred: Go bin directories, PATH, then the sbin directories (Debian
// installs nginx there, off a normal user's PATH).
func candidates(name string) []string {
	dirs := slices.Concat(goBinDirs(), filepath.SplitList(os.Getenv("PATH")),
		[]string{"/usr/local/sbin", "/usr/sbin", "/sbin"})
	var out []string
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); d != "" && err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			out = append(out, p)
		}
	}
	return out
}

// FindTool returns the preferred executable called name.
func FindTool(name string) (string, bool) {
	if c := candidates(name); len(c) > 0 {
		return c[0], true
	}
	return "", false
}

// RequireTool returns the path of an external program, or skips (fails in CI).
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	p, ok := FindTool(name)
	if !ok {
		Missing(tb, "%s not found in GOBIN, GOPATH/bin, PATH or sbin (scripts/install-test-deps.sh and install-bench-deps.sh install it)", name)
	}
	return p
}

// registryBin is the first `registry` that is CNCF distribution v3: other
// programs of that name exist, and v2 lacks the config keys used here.
var registryBin = sync.OnceValue(func() string {
	for _, p := range candidates("registry") {
		if out, err := exec.Command(p, "--version").Output(); err == nil && strings.Contains(string(out), "distribution/v3") {
			return p
		}
	}
	return ""
})

// RequireRegistry returns the distribution v3 `registry` binary, or skips (fails in CI).
func RequireRegistry(tb testing.TB) string {
	tb.Helper()
	p := registryBin()
	if p == "" {
		Missing(tb, "registry (distribution v3) not found in GOBIN, GOPATH/bin or PATH (scripts/install-test-deps.sh installs it)")
	}
	return p
}

// ModuleRoot returns the directory holding Outpost's go.mod.
func ModuleRoot(tb testing.TB) string {
	tb.Helper()
	root, err := moduleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return root
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the Outpost module")
	}
	return filepath.Dir(gomod), nil
}

// buildDir holds the outpost binary; Main removes it.
var buildDir string

// outpost builds ./cmd/outpost once per test binary, as `make build` does
// (static, trimmed paths), so every suite tests what ships.
var outpost = sync.OnceValues(func() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if buildDir, err = os.MkdirTemp("", "outpost-test-bin-"); err != nil {
		return "", err
	}
	bin := filepath.Join(buildDir, "outpost")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/outpost")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/outpost in %s: %w\n%s", root, err, out)
	}
	return bin, nil
})

// Outpost returns the outpost binary, building it on first use; a build
// failure fails the test (it is never a reason to skip).
func Outpost(tb testing.TB) string {
	tb.Helper()
	bin, err := outpost()
	if err != nil {
		tb.Fatalf("outpost binary: %v", err)
	}
	return bin
}

// Main runs a package's tests and removes the outpost binary afterwards:
// func TestMain(m *testing.M) { testenv.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}
