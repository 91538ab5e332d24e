package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// blobInfoCache is written by skopeo (as root) whatever flags are given.
const blobInfoCache = "/var/lib/containers/cache/blob-info-cache-v1.boltdb"

// registriesConf renders a registries.conf that sends docker.io and ghcr.io
// to mirror locations and their real locations to the dead port.
// writeRegistriesConf writes dir/registries.conf pointing docker.io and
// (path-prefix form) ghcr.io at the mirror under test, and returns its path.
// The stand-in mirror knows no ghcr.io.
func writeRegistriesConf(t *testing.T, e *testEnv, dir string) string {
	ghcrMirror := e.Mirror.Addr + "/ghcr.io"
	if standIn {
		ghcrMirror = ""
	}
	conf := filepath.Join(dir, "registries.conf")
	testenv.WriteFile(t, conf, registriesConf(e.Mirror.Addr, ghcrMirror))
	return conf
}

func registriesConf(hubMirror, ghcrMirror string) string {
	block := func(prefix, mirror string) string {
		return fmt.Sprintf(`
[[registry]]
prefix = %q
location = %q
insecure = true

[[registry.mirror]]
location = %q
insecure = true
`, prefix, testenv.DeadAddr, mirror)
	}
	conf := `unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
` + block("docker.io", hubMirror)
	if ghcrMirror != "" {
		conf += block("ghcr.io", ghcrMirror)
	}
	return conf
}

// TestSkopeo copies and inspects images through registries.conf mirrors:
// the plain mirror form for docker.io and the path-prefix form
// (location = "<mirror>/ghcr.io") for the non-default upstream.
func TestSkopeo(t *testing.T) {
	skopeo := testenv.RequireTool(t, "skopeo")
	testenv.RemoveIfCreated(t, blobInfoCache)
	e := newEnv(t, envOptions{TagTTL: "5m"})
	fx := e.Fx
	dir := t.TempDir()
	conf := writeRegistriesConf(t, e, dir)
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	env := testenv.Env("TMPDIR="+tmp, "HOME="+dir, "XDG_RUNTIME_DIR="+dir)
	run := func(t *testing.T, args ...string) []byte {
		t.Helper()
		args = append([]string{"--registries-conf", conf, "--insecure-policy"}, args...)
		return testenv.MustRun(t, 90*time.Second, env, skopeo, args...).Stdout
	}
	// inspect runs `skopeo [global...] inspect --no-tags ref` and checks the
	// reported digest (that of the reference, an index for multi-arch images)
	// and the architecture of the image selected for this platform.
	inspect := func(t *testing.T, ref, wantDigest, wantArch string, global ...string) {
		t.Helper()
		out := run(t, append(global, "inspect", "--no-tags", ref)...)
		var info struct{ Digest, Architecture string }
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, out)
		}
		if info.Digest != wantDigest || info.Architecture != wantArch {
			t.Errorf("skopeo %v inspect %s: digest %s arch %s, want %s %s", global, ref, info.Digest, info.Architecture, wantDigest, wantArch)
		}
	}

	t.Run("copy all platforms to dir", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "all")
		run(t, "copy", "--all", "docker://docker.io/library/alpine:3", "dir:"+out)
		checkSkopeoDir(t, out, fx.Alpine)
	})

	t.Run("override arch, short name", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "arm64")
		run(t, "--override-arch", "arm64", "copy", "docker://alpine:3", "dir:"+out)
		checkSkopeoDir(t, out, fx.Alpine.child("linux/arm64"))
	})

	t.Run("inspect", func(t *testing.T) {
		inspect(t, "docker://docker.io/library/busybox:1.36", fx.Busybox.Digest, "amd64")
		inspect(t, "docker://docker.io/acme/tool:v1", fx.Tool.Digest, "amd64")
		inspect(t, "docker://docker.io/library/alpine:3", fx.Alpine.Digest, "arm64", "--override-arch", "arm64")
		raw := run(t, "inspect", "--raw", "docker://docker.io/library/alpine:latest")
		if !bytes.Equal(raw, fx.Alpine.Raw) {
			t.Errorf("skopeo inspect --raw alpine:latest: digest %s, want %s", digestOf(raw), fx.Alpine.Digest)
		}
	})

	t.Run("path-prefix mirror for ghcr.io", func(t *testing.T) {
		requireOutpost(t)
		raw := run(t, "inspect", "--no-tags", "--raw", "docker://ghcr.io/org/app:1")
		if !bytes.Equal(raw, fx.App.Raw) {
			t.Errorf("skopeo inspect --raw ghcr.io/org/app:1: digest %s, want %s", digestOf(raw), fx.App.Digest)
		}
		inspect(t, "docker://ghcr.io/org/app:1", fx.App.Digest, "arm64", "--override-arch", "arm64")
		out := filepath.Join(t.TempDir(), "app")
		run(t, "copy", "--all", "docker://ghcr.io/org/app@"+fx.App.Digest, "dir:"+out)
		checkSkopeoDir(t, out, fx.App)
		if n := len(e.GHCR.Front.Requests()); n == 0 {
			t.Errorf("ghcr.io upstream saw no request")
		}
	})

	t.Run("path-prefix mirror for docker.io", func(t *testing.T) {
		requireOutpost(t)
		conf2 := filepath.Join(t.TempDir(), "registries.conf")
		testenv.WriteFile(t, conf2, registriesConf(e.Mirror.Addr+"/docker.io", ""))
		res := testenv.MustRun(t, 60*time.Second, env, skopeo, "--registries-conf", conf2, "--insecure-policy",
			"inspect", "--no-tags", "--raw", "docker://docker.io/library/busybox:1.36")
		if !bytes.Equal(res.Stdout, fx.Busybox.Raw) {
			t.Errorf("busybox via %s/docker.io: digest %s, want %s", e.Mirror.Addr, digestOf(res.Stdout), fx.Busybox.Digest)
		}
	})
}

// checkSkopeoDir checks a `skopeo copy --all ... dir:OUT` result: the top
// manifest is m byte for byte and every child manifest and blob is present.
func checkSkopeoDir(t *testing.T, dir string, m *manifest) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil || !bytes.Equal(raw, m.Raw) {
		t.Errorf("%s/manifest.json: err=%v digest %s, want %s", dir, err, digestOf(raw), m.Digest)
	}
	for _, c := range m.Children {
		raw, err := os.ReadFile(filepath.Join(dir, c.Digest[len("sha256:"):]+".manifest.json"))
		if err != nil || !bytes.Equal(raw, c.Raw) {
			t.Errorf("%s child %s: err=%v digest %s", dir, c.Platform, err, digestOf(raw))
		}
	}
	for _, b := range m.blobs() {
		data, err := os.ReadFile(filepath.Join(dir, b.hex()))
		if err != nil || digestOf(data) != b.Digest {
			t.Errorf("%s blob %s: err=%v", dir, b.Digest, err)
		}
	}
}
