package packaging

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// startRegistry starts the CNCF distribution registry (v3, `registry`) on a
// free loopback port with filesystem storage under dir, and returns its
// host:port once /v2/ answers.
func startRegistry(t *testing.T, dir string) (*proc, string) {
	t.Helper()
	bin := requireTool(t, "registry")
	addr := freeAddr(t)
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: packaging-test
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "registry", filepath.Join(dir, "registry.log"), testEnv(), bin, "serve", cfgPath)
	waitHTTP(t, p, "http://"+addr+"/v2/", 30*time.Second)
	return p, addr
}

// pushRandomImage writes a small random image (two layers) to
// addr/repo:tag and returns its manifest digest.
func pushRandomImage(t *testing.T, addr, repo, tag string) string {
	t.Helper()
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(addr+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
