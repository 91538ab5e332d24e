package packaging

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// Processes, commands, tool lookup, ports and HTTP come from testenv; this
// file holds only what the packaging suite adds: the run directory (which
// may hold mounts), the install hint, the admin /healthz wait and the pull
// check.

// baseDir holds everything one `go test` run creates (packages, chroot, logs).
var baseDir string

// TestMain is not testenv.Main: this suite never builds ./cmd/outpost (it
// tests the binaries `make packages` builds), and it must not remove a
// directory something is still mounted below.
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

// requireTool is testenv.RequireTool with this suite's install hint: most of
// its tools (nfpm, debootstrap, qemu, rpm) come from the packaging script.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, ok := testenv.FindTool(name)
	if !ok {
		testenv.Missing(t, "%s not found (scripts/install-packaging-deps.sh installs it)", name)
	}
	return p
}

// moduleRoot is testenv.ModuleRoot for the package builds, which run once
// per test binary outside any one test.
var moduleRoot = testenv.FindModuleRoot

// waitServing waits until outpost (run by p) answers /v2/ on addr within
// v2Timeout, then /healthz on its admin listener.
func waitServing(t *testing.T, p *testenv.Proc, addr, admin string, v2Timeout time.Duration) {
	t.Helper()
	testenv.WaitUntil(t, p, v2Timeout, p.Name+" /v2/", func() error { return testenv.PingV2(addr) })
	testenv.WaitUntil(t, p, 10*time.Second, p.Name+" /healthz", func() error {
		resp, _, err := testenv.Fetch(http.MethodGet, "http://"+admin+"/healthz", nil)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET /healthz: status %d", resp.StatusCode)
		}
		return err
	})
}

// stopCleanly stops p with SIGTERM (testenv.Proc.Stop) and fails the test
// unless it exited with status 0.
func stopCleanly(t *testing.T, p *testenv.Proc) {
	t.Helper()
	p.Stop()
	if err := p.Err(); err != nil {
		t.Errorf("%s did not exit cleanly on SIGTERM: %v\n%s", p.Name, err, testenv.Tail(p.Log, 20))
	}
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

// pullVerify pulls repo:ref through the registry at base (http://host:port)
// the way a client does (GET manifest, GET every blob) and checks every
// digest and size against want (the manifest digest pushed upstream). It
// returns the number of blob bytes received.
func pullVerify(t *testing.T, base, repo, ref, want string) int64 {
	t.Helper()
	get := func(path, accept string) ([]byte, http.Header) {
		t.Helper()
		var header map[string]string
		if accept != "" {
			header = map[string]string{"Accept": accept}
		}
		resp, body, err := testenv.Fetch(http.MethodGet, base+path, header)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
		}
		return body, resp.Header
	}
	raw, h := get("/v2/"+repo+"/manifests/"+ref, testenv.ManifestAccept)
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
