package packaging

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// pkgArches maps Go/Debian architecture names to rpm's and to ELF machines.
var pkgArches = []struct {
	deb, rpm string
}{
	{"amd64", "x86_64"},
	{"arm64", "aarch64"},
}

// pkgSet is the output of one `make packages` run.
type pkgSet struct {
	Version string            // as passed to VERSION (and so PKG_VERSION)
	Dir     string            // DIST
	Bins    map[string]string // deb arch -> BINDIR/outpost-linux-<arch>
	Debs    map[string]string // deb arch -> .deb
	RPMs    map[string]string // deb arch -> .rpm
	Config  []byte            // the /etc/outpost/config.yaml it ships
}

// buildPackages runs `make packages` for version into a fresh directory below
// baseDir, shipping configSrc (a path) as /etc/outpost/config.yaml.
func buildPackages(version string, arches []string, configSrc string) (*pkgSet, error) {
	r, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	nfpm, ok := testenv.FindTool("nfpm")
	if !ok {
		return nil, fmt.Errorf("nfpm not found (scripts/install-packaging-deps.sh installs it)")
	}
	dir := filepath.Join(baseDir, "pkg-"+version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	bindir := filepath.Join(dir, "bin")
	// make finds nfpm on PATH; it may live only in a Go bin directory.
	path := "PATH=" + filepath.Dir(nfpm) + string(os.PathListSeparator) + os.Getenv("PATH")
	res := testenv.RunIn(r, 10*time.Minute, testenv.Env(path), "make", "--no-print-directory", "packages",
		"VERSION="+version, "COMMIT=pkgtest", "DIST="+dir, "BINDIR="+bindir,
		"PKG_ARCHES="+strings.Join(arches, " "), "PKG_CONFIG="+configSrc)
	if res.Err != nil {
		return nil, fmt.Errorf("make packages VERSION=%s: %s", version, res)
	}
	cfg, err := os.ReadFile(configSrc)
	if err != nil {
		return nil, err
	}
	s := &pkgSet{Version: version, Dir: dir, Config: cfg,
		Bins: map[string]string{}, Debs: map[string]string{}, RPMs: map[string]string{}}
	for _, a := range pkgArches {
		if !slices.Contains(arches, a.deb) {
			continue
		}
		s.Bins[a.deb] = filepath.Join(bindir, "outpost-linux-"+a.deb)
		s.Debs[a.deb] = filepath.Join(dir, fmt.Sprintf("outpost_%s-1_%s.deb", version, a.deb))
		s.RPMs[a.deb] = filepath.Join(dir, fmt.Sprintf("outpost-%s-1.%s.rpm", version, a.rpm))
		for _, f := range []string{s.Bins[a.deb], s.Debs[a.deb], s.RPMs[a.deb]} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("make packages did not produce %s: %v\n%s", f, err, res)
			}
		}
	}
	fmt.Fprintf(os.Stderr, "packaging: make packages VERSION=%s (%s) took %s\n", version, strings.Join(arches, ","), res.Elapsed.Round(100*time.Millisecond))
	return s, nil
}

// v1 is 0.0.1 for amd64 and arm64 with the real packaging/config.yaml.
var v1 = sync.OnceValues(func() (*pkgSet, error) {
	r, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	return buildPackages("0.0.1", []string{"amd64", "arm64"}, filepath.Join(r, "packaging", "config.yaml"))
})

// v2 is 0.0.2 for amd64 whose shipped config differs from 0.0.1's, so that
// an upgrade over an edited config is a real conffile conflict.
var v2 = sync.OnceValues(func() (*pkgSet, error) {
	if _, err := v1(); err != nil { // sequential: share the build cache, not the CPU
		return nil, err
	}
	r, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(r, "packaging", "config.yaml"))
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(baseDir, "config-0.0.2.yaml")
	b = append(b, []byte("\n# (packaging test) the default config shipped with 0.0.2 differs from 0.0.1's.\n")...)
	if err := os.WriteFile(cfg, b, 0o644); err != nil {
		return nil, err
	}
	return buildPackages("0.0.2", []string{"amd64"}, cfg)
})

func requirePackages(t *testing.T, get func() (*pkgSet, error)) *pkgSet {
	t.Helper()
	requireTool(t, "make")
	requireTool(t, "nfpm")
	s, err := get()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
