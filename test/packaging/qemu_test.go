package packaging

import (
	"debug/elf"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// TestArm64PullThroughQemu runs the static linux/arm64 binary that goes into
// the arm64 packages under qemu-aarch64-static (binfmt_misc is not used, so
// the host's kernel state is untouched) and pulls a real image through it
// from a CNCF distribution registry on loopback: manifest and every blob,
// digests and sizes verified, then again from the cache with the upstream
// stopped.
func TestArm64PullThroughQemu(t *testing.T) {
	t.Parallel()
	qemu := requireTool(t, "qemu-aarch64-static")
	testenv.RequireRegistry(t)
	s := requirePackages(t, v1)
	bin := s.Bins["arm64"]
	if m, static := elfInfo(t, bin); m != elf.EM_AARCH64 || !static {
		t.Fatalf("%s: machine %v static=%v, want EM_AARCH64 static", bin, m, static)
	}

	res := testenv.MustRun(t, time.Minute, testenv.Env(), qemu, bin, "version")
	out := string(res.Stdout) + string(res.Stderr) // nothing may come before the version line
	if want := fmt.Sprintf("outpost %s (commit pkgtest, ", s.Version); !strings.HasPrefix(out, want) || !strings.Contains(out, "linux/arm64") {
		t.Fatalf("qemu-aarch64-static %s version = %q, want %q… linux/arm64", bin, out, want)
	}

	dir := t.TempDir()
	reg := testenv.StartRegistry(t, filepath.Join(dir, "upstream"), testenv.RegistryOptions{})
	digest := pushRandomImage(t, reg.Addr, "edge/app", "v1")

	// testenv renders the config; the admin listener (for /healthz) is added.
	addr, admin := testenv.FreeAddr(t), testenv.FreeAddr(t)
	cfg := testenv.OutpostConfig{
		Addr:      addr,
		Root:      filepath.Join(dir, "store"),
		Level:     "info",
		Upstreams: []testenv.Upstream{{Name: "registry.test", URL: reg.URL(""), Default: true, TagTTL: "5m"}},
	}.YAML() + "admin:\n  address: " + admin + "\n"
	cfgPath := filepath.Join(dir, "outpost.yaml")
	testenv.WriteFile(t, cfgPath, cfg)
	p := testenv.Start(t, "outpost (arm64)", filepath.Join(dir, "outpost.log"), testenv.Env(), qemu, bin, "serve", "--config", cfgPath)
	waitServing(t, p, addr, admin, 60*time.Second) // emulated: slower to start

	start := time.Now()
	n := pullVerify(t, "http://"+addr, "edge/app", "v1", digest)
	t.Logf("pulled edge/app:v1 (%s, %d blob bytes) through the arm64 binary under qemu in %s", digest, n, time.Since(start).Round(time.Millisecond))

	// The same image by digest from the cache alone.
	reg.Stop()
	pullVerify(t, "http://"+addr, "edge/app", digest, digest)

	stopCleanly(t, p)
}
