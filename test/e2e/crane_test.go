package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// TestCrane pulls through every routing form with crane and raw requests and
// checks that all forms of one image share one cache entry.
func TestCrane(t *testing.T) {
	crane := testenv.RequireTool(t, "crane")
	e := newEnv(t, envOptions{TagTTL: "5m"})
	fx := e.Fx
	m := e.Mirror.Addr
	env := testenv.Env("DOCKER_CONFIG=" + t.TempDir())
	run := func(t *testing.T, args ...string) []byte {
		t.Helper()
		return testenv.MustRun(t, 60*time.Second, env, crane, args...).Stdout
	}
	checkManifest := func(t *testing.T, ref string, want *manifest, extra ...string) {
		t.Helper()
		got := run(t, append([]string{"manifest", ref}, extra...)...)
		if !bytes.Equal(got, want.Raw) {
			t.Errorf("crane manifest %s %v: got %d bytes (digest %s), want %s", ref, extra, len(got), digestOf(got), want.Digest)
		}
	}

	t.Run("default upstream path", func(t *testing.T) {
		checkManifest(t, m+"/library/alpine:3", fx.Alpine)
		checkManifest(t, m+"/library/alpine@"+fx.Alpine.Digest, fx.Alpine)
		checkManifest(t, m+"/library/busybox:1.36", fx.Busybox)
		checkManifest(t, m+"/acme/tool:v1", fx.Tool)
		if got := strings.TrimSpace(string(run(t, "digest", m+"/library/alpine:3"))); got != fx.Alpine.Digest {
			t.Errorf("crane digest: %s, want %s", got, fx.Alpine.Digest)
		}
	})

	t.Run("short and prefixed names", func(t *testing.T) {
		requireOutpost(t)
		for _, repo := range []string{"alpine", "docker.io/library/alpine", "docker.io/alpine"} {
			checkManifest(t, m+"/"+repo+":3", fx.Alpine)
			checkManifest(t, m+"/"+repo+"@"+fx.Alpine.Digest, fx.Alpine)
			if got := strings.TrimSpace(string(run(t, "digest", m+"/"+repo+":latest"))); got != fx.Alpine.Digest {
				t.Errorf("crane digest %s:latest: %s, want %s", repo, got, fx.Alpine.Digest)
			}
		}
		checkManifest(t, m+"/docker.io/acme/tool:v1", fx.Tool)
		dir := filepath.Join(t.TempDir(), "alpine")
		run(t, "pull", "--format", "oci", m+"/docker.io/library/alpine@"+fx.Alpine.Digest, dir)
		checkOCILayout(t, dir, fx.Alpine)
	})

	t.Run("ns query parameter", func(t *testing.T) {
		requireOutpost(t)
		for _, path := range []string{
			"/v2/alpine/manifests/3?ns=docker.io",
			"/v2/library/alpine/manifests/3?ns=docker.io",
			"/v2/library/alpine/manifests/3?ns=index.docker.io",
			"/v2/alpine/manifests/3?ns=registry-1.docker.io",
			"/v2/alpine/manifests/" + fx.Alpine.Digest + "?ns=docker.io",
		} {
			e.getManifest(t, path, fx.Alpine)
		}
		arm := fx.Alpine.child("linux/arm64")
		e.getBlob(t, "alpine", arm.Config)
		e.getBlob(t, "library/alpine", arm.Layers[0])
		// A tag of a registry that is not configured, or that does not have
		// the repository, must not be answered from another upstream's cache.
		for _, path := range []string{
			"/v2/library/alpine/manifests/3?ns=quay.io",
			"/v2/library/alpine/manifests/3?ns=ghcr.io",
		} {
			resp, body, err := testenv.Fetch("GET", e.Mirror.URL(path), map[string]string{"Accept": testenv.ManifestAccept})
			if err != nil || resp.StatusCode != 404 {
				t.Errorf("GET %s: err=%v status=%v, want 404: %.200s", path, err, resp.StatusCode, body)
			}
		}
	})

	t.Run("non-default upstream", func(t *testing.T) {
		requireOutpost(t)
		checkManifest(t, m+"/ghcr.io/org/app:1", fx.App)
		checkManifest(t, m+"/ghcr.io/org/app@"+fx.App.Digest, fx.App)
		checkManifest(t, m+"/ghcr.io/org/app:1", fx.App.child("linux/arm64"), "--platform", "linux/arm64")
		e.getManifest(t, "/v2/org/app/manifests/1?ns=ghcr.io", fx.App)
		e.getManifest(t, "/v2/org/app/manifests/"+fx.App.Digest+"?ns=ghcr.io", fx.App)
		dir := filepath.Join(t.TempDir(), "app")
		run(t, "pull", "--format", "oci", m+"/ghcr.io/org/app:1", dir)
		checkOCILayout(t, dir, fx.App)
	})

	t.Run("platform, blob, config, pull", func(t *testing.T) {
		arm := fx.Alpine.child("linux/arm64")
		checkManifest(t, m+"/library/alpine:3", arm, "--platform", "linux/arm64")
		got := run(t, "blob", m+"/library/alpine@"+arm.Layers[0].Digest)
		if digestOf(got) != arm.Layers[0].Digest {
			t.Errorf("crane blob: digest %s, want %s", digestOf(got), arm.Layers[0].Digest)
		}
		if got := run(t, "config", m+"/acme/tool:v1"); !bytes.Equal(got, fx.Tool.Config.Data) {
			t.Errorf("crane config acme/tool:v1: %s, want %s", got, fx.Tool.Config.Data)
		}
		dir := filepath.Join(t.TempDir(), "alpine")
		run(t, "pull", "--format", "oci", m+"/library/alpine:3", dir)
		checkOCILayout(t, dir, fx.Alpine)
		tarball := filepath.Join(t.TempDir(), "busybox.tar")
		run(t, "pull", m+"/library/busybox@"+fx.Busybox.Digest, tarball)
		if fi, err := os.Stat(tarball); err != nil || fi.Size() < int64(len(fx.Busybox.Layers[0].Data)) {
			t.Errorf("crane pull busybox: tarball %v %v", fi, err)
		}
	})

	t.Run("one cache entry per image", func(t *testing.T) {
		requireOutpost(t)
		// With a 5m tag TTL, every form above must have been answered by the
		// one cached copy of library/alpine:3.
		if n := e.Hub.Front.Count("GET", "/v2/library/alpine/manifests/3"); n != 1 {
			t.Errorf("upstream saw %d GETs of library/alpine/manifests/3, want 1; requests:\n%s", n, requestList(e.Hub))
		}
		for _, r := range e.Hub.Front.Requests() {
			if !strings.HasPrefix(r.Path, "/v2/library/") && !strings.HasPrefix(r.Path, "/v2/acme/") && r.Path != "/v2/" {
				t.Errorf("docker.io upstream got a request for a non-canonical repository: %s", r)
			}
		}
		for _, r := range e.GHCR.Front.Requests() {
			// library/alpine:3 was asked for with ns=ghcr.io above.
			if !strings.HasPrefix(r.Path, "/v2/org/app/") && r.Path != "/v2/" && r.Path != "/v2/library/alpine/manifests/3" {
				t.Errorf("ghcr.io upstream got an unexpected request: %s", r)
			}
		}
		repos := strings.Fields(string(run(t, "catalog", m)))
		var alpine []string
		for _, r := range repos {
			if strings.HasSuffix(r, "alpine") {
				alpine = append(alpine, r)
			}
		}
		if !slices.Equal(alpine, []string{"docker.io/library/alpine"}) {
			t.Errorf("crane catalog: alpine entries %q, want exactly [docker.io/library/alpine]; full catalog %q", alpine, repos)
		}
		for _, want := range []string{"docker.io/library/busybox", "docker.io/acme/tool", "ghcr.io/org/app"} {
			if !slices.Contains(repos, want) {
				t.Errorf("crane catalog: %q missing from %q", want, repos)
			}
		}
	})
}

// checkOCILayout checks that an OCI layout written by crane holds m and every
// blob of it (crane verifies digests while pulling).
func checkOCILayout(t *testing.T, dir string, m *manifest) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Manifests []struct{ Digest string } `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != m.Digest {
		t.Errorf("%s/index.json: %s, want one entry %s", dir, raw, m.Digest)
	}
	for _, b := range m.blobs() {
		data, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", b.hex()))
		if err != nil || digestOf(data) != b.Digest {
			t.Errorf("layout blob %s: err=%v", b.Digest, err)
		}
	}
}

func requestList(u *upstream) string {
	var b strings.Builder
	for _, r := range u.Front.Requests() {
		b.WriteString("  " + r.String() + "\n")
	}
	return b.String()
}
