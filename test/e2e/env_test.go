package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// upstreamConfig is one entry of outpost's `upstreams:` list.
type upstreamConfig struct {
	Name              string
	URL               string
	Default           bool
	TagTTL            string // empty: product default
	RevalidateTimeout string // empty: product default
}

// outpostConfig renders outpost's YAML configuration.
type outpostConfig struct {
	Addr      string
	Root      string
	Level     string
	Upstreams []upstreamConfig
}

func (c outpostConfig) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "http:\n  address: %s\nstorage:\n  root: %s\nlog:\n  level: %s\nupstreams:\n", c.Addr, c.Root, c.Level)
	for _, u := range c.Upstreams {
		fmt.Fprintf(&b, "  - name: %s\n    urls: [%q]\n    insecure: true\n", u.Name, u.URL)
		if u.Default {
			b.WriteString("    default: true\n")
		}
		if u.TagTTL != "" {
			fmt.Fprintf(&b, "    tagTTL: %s\n", u.TagTTL)
		}
		if u.RevalidateTimeout != "" {
			fmt.Fprintf(&b, "    revalidateTimeout: %s\n", u.RevalidateTimeout)
		}
	}
	return b.String()
}

// mirror is the running pull-through cache under test.
type mirror struct {
	Addr    string
	DataDir string
	Proc    *proc
}

// URL returns http://<mirror>/<path>.
func (m *mirror) URL(path string) string { return "http://" + m.Addr + path }

// startOutpost writes cfg to dir/outpost.yaml and runs `outpost serve` until ready.
func startOutpost(t *testing.T, dir string, cfg outpostConfig) *mirror {
	t.Helper()
	bin := requireOutpost(t)
	cfgPath := filepath.Join(dir, "outpost.yaml")
	writeFile(t, cfgPath, cfg.YAML())
	p := startProc(t, "outpost", filepath.Join(dir, "outpost.log"), clientEnv(), bin, "serve", "--config", cfgPath)
	waitUntil(t, p, 20*time.Second, "outpost /v2/", func() error { return pingV2(cfg.Addr) })
	return &mirror{Addr: cfg.Addr, DataDir: cfg.Root, Proc: p}
}

// envOptions tune one test environment.
type envOptions struct {
	TagTTL            string
	RevalidateTimeout string
}

// testEnv is two seeded upstreams (docker.io, the default, and ghcr.io) and
// one outpost in front of them.
type testEnv struct {
	Dir    string
	Hub    *upstream // docker.io
	GHCR   *upstream // ghcr.io
	Mirror *mirror
	Fx     fixtureSet
}

func newEnv(t *testing.T, opts envOptions) *testEnv {
	t.Helper()
	if !standIn {
		requireOutpost(t)
	}
	dir := t.TempDir()
	fx := fixtures()
	e := &testEnv{Dir: dir, Fx: fx}
	e.Hub = startUpstream(t, filepath.Join(dir, "hub"), "docker.io", fx.tags())
	e.GHCR = startUpstream(t, filepath.Join(dir, "ghcr"), "ghcr.io", fx.tags())
	if standIn {
		p, addr := startRegistry(t, filepath.Join(dir, "standin"), e.Hub.URL())
		e.Mirror = &mirror{Addr: addr, DataDir: filepath.Join(dir, "standin", "data"), Proc: p}
		return e
	}
	od := filepath.Join(dir, "outpost")
	if err := os.MkdirAll(od, 0o755); err != nil {
		t.Fatal(err)
	}
	e.Mirror = startOutpost(t, od, outpostConfig{
		Addr:  freeAddr(t),
		Root:  filepath.Join(od, "data"),
		Level: "debug",
		Upstreams: []upstreamConfig{
			{Name: "docker.io", URL: e.Hub.URL(), Default: true, TagTTL: opts.TagTTL, RevalidateTimeout: opts.RevalidateTimeout},
			{Name: "ghcr.io", URL: e.GHCR.URL(), TagTTL: opts.TagTTL, RevalidateTimeout: opts.RevalidateTimeout},
		},
	})
	return e
}

// upstream returns the upstream serving a fixture ref.
func (e *testEnv) upstream(r taggedRef) *upstream {
	if r.Upstream == "ghcr.io" {
		return e.GHCR
	}
	return e.Hub
}

// mirrorRepo is how a client addresses r's repository on the mirror with
// the path-prefix form: "docker.io/library/alpine", "ghcr.io/org/app".
func mirrorRepo(r taggedRef) string { return r.Upstream + "/" + r.Repo }

// getManifest fetches a manifest from the mirror and checks it is m, byte for byte.
func (e *testEnv) getManifest(t *testing.T, path string, m *manifest) {
	t.Helper()
	e.getManifestWithin(t, httpClient.Timeout, path, m)
}

// getManifestWithin is getManifest that gives up (fatally) after timeout.
func (e *testEnv) getManifestWithin(t *testing.T, timeout time.Duration, path string, m *manifest) {
	t.Helper()
	resp, body, err := fetchWithin(timeout, "GET", e.Mirror.URL(path), map[string]string{"Accept": manifestAccept})
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d, want 200: %.300s", path, resp.StatusCode, body)
	}
	if got := digestOf(body); got != m.Digest {
		t.Fatalf("GET %s: body digest %s, want %s", path, got, m.Digest)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != m.Digest {
		t.Errorf("GET %s: Docker-Content-Digest %q, want %s", path, got, m.Digest)
	}
	if got := resp.Header.Get("Content-Type"); got != m.MediaType {
		t.Errorf("GET %s: Content-Type %q, want %s", path, got, m.MediaType)
	}
}

// getBlob fetches a blob from the mirror and checks its bytes.
func (e *testEnv) getBlob(t *testing.T, repoPath string, b blob) {
	t.Helper()
	path := "/v2/" + repoPath + "/blobs/" + b.Digest
	resp, body, err := fetch("GET", e.Mirror.URL(path), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d, want 200: %.300s", path, resp.StatusCode, body)
	}
	if got := digestOf(body); got != b.Digest {
		t.Fatalf("GET %s: body digest %s (%d bytes), want %s (%d bytes)", path, got, len(body), b.Digest, len(b.Data))
	}
}

// warm pulls every manifest and blob of every fixture through the mirror.
func (e *testEnv) warm(t *testing.T) {
	t.Helper()
	for _, r := range e.Fx.tags() {
		repo := mirrorRepo(r)
		if standIn {
			if r.Upstream != "docker.io" {
				continue // the stand-in mirrors only the default upstream
			}
			repo = r.Repo
		}
		e.getManifest(t, "/v2/"+repo+"/manifests/"+r.Tag, r.M)
		for _, m := range r.M.all() {
			e.getManifest(t, "/v2/"+repo+"/manifests/"+m.Digest, m)
		}
		for _, b := range r.M.blobs() {
			e.getBlob(t, repo, b)
		}
	}
}
