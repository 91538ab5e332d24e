package packaging

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	requireTool(t, "registry")
	s := requirePackages(t, v1)
	bin := s.Bins["arm64"]
	if m, static := elfInfo(t, bin); m != elf.EM_AARCH64 || !static {
		t.Fatalf("%s: machine %v static=%v, want EM_AARCH64 static", bin, m, static)
	}

	out := mustRun(t, time.Minute, testEnv(), qemu, bin, "version")
	if want := fmt.Sprintf("outpost %s (commit pkgtest, ", s.Version); !strings.HasPrefix(out, want) || !strings.Contains(out, "linux/arm64") {
		t.Fatalf("qemu-aarch64-static %s version = %q, want %q… linux/arm64", bin, out, want)
	}

	dir := t.TempDir()
	reg, upstream := startRegistry(t, filepath.Join(dir, "upstream"))
	digest := pushRandomImage(t, upstream, "edge/app", "v1")

	addr, admin := freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`http:
  address: %s
admin:
  address: %s
storage:
  root: %s
log:
  level: info
  format: json
upstreams:
  - name: registry.test
    urls: [http://%s]
    default: true
    insecure: true
    tagTTL: 5m
`, addr, admin, filepath.Join(dir, "store"), upstream)
	cfgPath := filepath.Join(dir, "outpost.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "outpost-arm64", filepath.Join(dir, "outpost.log"), testEnv(), qemu, bin, "serve", "--config", cfgPath)
	waitHTTP(t, p, "http://"+addr+"/v2/", 60*time.Second)
	waitHTTP(t, p, "http://"+admin+"/healthz", 10*time.Second)

	start := time.Now()
	n := pullVerify(t, "http://"+addr, "edge/app", "v1", digest)
	t.Logf("pulled edge/app:v1 (%s, %d blob bytes) through the arm64 binary under qemu in %s", digest, n, time.Since(start).Round(time.Millisecond))

	// The same image by digest from the cache alone.
	reg.stop()
	pullVerify(t, "http://"+addr, "edge/app", digest, digest)

	if err := p.stop(); err != nil {
		t.Errorf("outpost (arm64) did not exit cleanly on SIGTERM: %v\n%s", err, tail(p.log, 20))
	}
}
