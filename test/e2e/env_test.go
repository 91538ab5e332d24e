package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// standIn replaces outpost with a distribution proxy (harness self-check).
var standIn = os.Getenv("OUTPOST_E2E_STANDIN") == "distribution"

func TestMain(m *testing.M) { testenv.Main(m) }

// requireOutpost returns the outpost binary; tests of Outpost-specific
// behaviour call it to be skipped in stand-in mode.
func requireOutpost(t *testing.T) string {
	t.Helper()
	if standIn {
		t.Skip("tests Outpost-specific behaviour; skipped with OUTPOST_E2E_STANDIN")
	}
	return testenv.Outpost(t)
}

// envOptions tune one test environment.
type envOptions struct {
	TagTTL            string
	RevalidateTimeout string
	RequestTimeout    string
}

// testEnv is two seeded upstreams (docker.io, the default, and ghcr.io) and
// one outpost in front of them.
type testEnv struct {
	Dir    string
	Hub    *upstream // docker.io
	GHCR   *upstream // ghcr.io
	Mirror *testenv.Server
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
		e.Mirror = testenv.StartRegistry(t, filepath.Join(dir, "standin"), testenv.RegistryOptions{RemoteURL: e.Hub.URL()})
		return e
	}
	e.Mirror = testenv.StartOutpost(t, filepath.Join(dir, "outpost"), testenv.OutpostConfig{
		Level: "debug",
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URL: e.Hub.URL(), Default: true, TagTTL: opts.TagTTL, RevalidateTimeout: opts.RevalidateTimeout,
				RequestTimeout: opts.RequestTimeout},
			{Name: "ghcr.io", URL: e.GHCR.URL(), TagTTL: opts.TagTTL, RevalidateTimeout: opts.RevalidateTimeout,
				RequestTimeout: opts.RequestTimeout},
		},
	})
	return e
}

// mirrorRepo is how a client addresses r's repository on the mirror with
// the path-prefix form: "docker.io/library/alpine", "ghcr.io/org/app".
func mirrorRepo(r taggedRef) string { return r.Upstream + "/" + r.Repo }

// getManifest fetches a manifest from the mirror and checks it is m, byte for byte.
func (e *testEnv) getManifest(t *testing.T, path string, m *manifest) {
	t.Helper()
	e.getManifestWithin(t, testenv.Client.Timeout, path, m)
}

// getManifestWithin is getManifest that gives up (fatally) after timeout.
func (e *testEnv) getManifestWithin(t *testing.T, timeout time.Duration, path string, m *manifest) {
	t.Helper()
	resp, body, err := testenv.FetchWithin(timeout, "GET", e.Mirror.URL(path), map[string]string{"Accept": testenv.ManifestAccept})
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
	resp, body, err := testenv.Fetch("GET", e.Mirror.URL(path), nil)
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
