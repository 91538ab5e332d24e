package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// podmanHostPaths are what podman 4.3 (as root) may create on the host
// even with --root, --runroot, --tmpdir and --network-config-dir under a
// temporary directory. Resolving a short name locks the alias cache.
var podmanHostPaths = []string{
	blobInfoCache,
	"/var/cache/containers/short-name-aliases.conf.lock",
	"/etc/containers/networks/netavark.lock",
	"/run/containers/networks",
	"/run/crun",
	"/run/runc",
}

// podmanImage is what `podman image inspect` reports about one image.
type podmanImage struct {
	ID           string `json:"Id"`
	Digest       string
	RepoTags     []string
	RepoDigests  []string
	Architecture string
}

// TestPodman pulls with podman through the registries.conf mirrors the
// README documents: the plain mirror location for docker.io (also reached
// by short names through unqualified-search-registries) and the
// path-prefix location "<outpost>/ghcr.io" for ghcr.io. The registries'
// own locations are the dead port, so only the mirror can have served
// a successful pull.
func TestPodman(t *testing.T) {
	testenv.RequireRoot(t)
	podman := testenv.RequireTool(t, "podman")
	for _, p := range podmanHostPaths {
		testenv.RemoveIfCreated(t, p)
	}
	e := newEnv(t, envOptions{TagTTL: "5m"})
	fx := e.Fx
	dir := t.TempDir()
	conf := writeRegistriesConf(t, e, dir)
	// Private storage and engine configuration, so that the host's files
	// (if any) change nothing.
	storageConf := filepath.Join(dir, "storage.conf")
	testenv.WriteFile(t, storageConf, fmt.Sprintf(`[storage]
driver = "vfs"
graphroot = %q
runroot = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "runroot")))
	containersConf := filepath.Join(dir, "containers.conf")
	testenv.WriteFile(t, containersConf, `[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
`)
	testenv.WriteFile(t, filepath.Join(dir, "tmp", ".keep"), "")
	env := testenv.Env(
		"CONTAINERS_REGISTRIES_CONF="+conf,
		"CONTAINERS_STORAGE_CONF="+storageConf,
		"CONTAINERS_CONF="+containersConf,
		"TMPDIR="+filepath.Join(dir, "tmp"),
		"HOME="+dir,
		"XDG_RUNTIME_DIR="+dir,
	)
	global := []string{
		"--root", filepath.Join(dir, "root"),
		"--runroot", filepath.Join(dir, "runroot"),
		"--tmpdir", filepath.Join(dir, "libpod-tmp"),
		"--network-config-dir", filepath.Join(dir, "networks"),
		"--storage-driver", "vfs",
		"--cgroup-manager", "cgroupfs",
		"--events-backend", "file",
	}
	run := func(t *testing.T, args ...string) []byte {
		t.Helper()
		return testenv.MustRun(t, 60*time.Second, env, podman, append(slices.Clone(global), args...)...).Stdout
	}
	inspect := func(t *testing.T, ref string) podmanImage {
		t.Helper()
		out := run(t, "image", "inspect", ref)
		var imgs []podmanImage
		if err := json.Unmarshal(out, &imgs); err != nil || len(imgs) != 1 {
			t.Fatalf("podman image inspect %s: %v\n%s", ref, err, out)
		}
		return imgs[0]
	}
	// pull runs `podman pull [flags] ref` and checks the stored image: it
	// is named name (ref fully qualified), its ID is img's config digest,
	// and its repo digests name the manifest pulled by tag (top: an index
	// for a multi-arch image) and the platform image.
	pull := func(t *testing.T, ref, name string, top, img *manifest, flags ...string) {
		t.Helper()
		out := strings.TrimSpace(string(run(t, append(append([]string{"pull", "-q"}, flags...), ref)...)))
		if want := img.Config.hex(); out != want {
			t.Errorf("podman pull %s: printed image ID %q, want %s (the config digest)", ref, out, want)
		}
		got := inspect(t, name)
		repo, _, _ := strings.Cut(name, ":")
		if want := img.Config.hex(); got.ID != want {
			t.Errorf("%s: image ID %s, want %s", name, got.ID, want)
		}
		if want := strings.TrimPrefix(img.Platform, "linux/"); got.Architecture != want {
			t.Errorf("%s: architecture %q, want %q", name, got.Architecture, want)
		}
		if !slices.Contains(got.RepoTags, name) {
			t.Errorf("%s: RepoTags %v lack %s", name, got.RepoTags, name)
		}
		for _, m := range []*manifest{top, img} {
			if want := repo + "@" + m.Digest; !slices.Contains(got.RepoDigests, want) {
				t.Errorf("%s: RepoDigests %v lack %s", name, got.RepoDigests, want)
			}
		}
	}
	// sawPull checks that the upstream behind Outpost served the tag and
	// the image's blobs, i.e. the pull went through the mirror.
	sawPull := func(t *testing.T, u *upstream, repo, tag string, img *manifest) {
		t.Helper()
		paths := []string{"/v2/" + repo + "/manifests/" + tag}
		for _, b := range append([]blob{img.Config}, img.Layers...) {
			paths = append(paths, "/v2/"+repo+"/blobs/"+b.Digest)
		}
		for _, p := range paths {
			if u.Front.Count("", p) == 0 {
				t.Errorf("%s upstream never saw %s; it saw %v", u.Name, p, u.Front.Requests())
			}
		}
	}

	start := time.Now()
	t.Run("alpine multi-arch", func(t *testing.T) {
		amd := fx.Alpine.child("linux/amd64")
		pull(t, "docker.io/library/alpine:3", "docker.io/library/alpine:3", fx.Alpine, amd)
		sawPull(t, e.Hub, "library/alpine", "3", amd)
	})

	t.Run("short names", func(t *testing.T) {
		// busybox may resolve through the host's shortnames.conf alias
		// (Debian ships busybox = docker.io/library/busybox); acme/tool has
		// no alias and goes through unqualified-search-registries.
		pull(t, "busybox:1.36", "docker.io/library/busybox:1.36", fx.Busybox, fx.Busybox)
		sawPull(t, e.Hub, "library/busybox", "1.36", fx.Busybox)
		pull(t, "acme/tool:v1", "docker.io/acme/tool:v1", fx.Tool, fx.Tool)
		sawPull(t, e.Hub, "acme/tool", "v1", fx.Tool)
	})

	t.Run("arch arm64", func(t *testing.T) {
		arm := fx.Alpine.child("linux/arm64")
		pull(t, "docker.io/library/alpine:3", "docker.io/library/alpine:3", fx.Alpine, arm, "--arch", "arm64")
		sawPull(t, e.Hub, "library/alpine", "3", arm)
	})

	t.Run("path-prefix mirror for ghcr.io", func(t *testing.T) {
		requireOutpost(t)
		amd := fx.App.child("linux/amd64")
		pull(t, "ghcr.io/org/app:1", "ghcr.io/org/app:1", fx.App, amd)
		sawPull(t, e.GHCR, "org/app", "1", amd)
	})

	t.Run("images", func(t *testing.T) {
		out := string(run(t, "images", "--noheading", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))
		want := map[string]string{
			"docker.io/library/alpine:3":     fx.Alpine.child("linux/arm64").Config.Digest,
			"docker.io/library/busybox:1.36": fx.Busybox.Config.Digest,
			"docker.io/acme/tool:v1":         fx.Tool.Config.Digest,
		}
		if !standIn {
			want["ghcr.io/org/app:1"] = fx.App.child("linux/amd64").Config.Digest
		}
		got := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if name, id, ok := strings.Cut(line, " "); ok {
				got[name] = id
			}
		}
		for name, id := range want {
			if got[name] != id && "sha256:"+got[name] != id {
				t.Errorf("podman images: %s has ID %q, want %s\n%s", name, got[name], id, out)
			}
		}
	})
	t.Logf("podman pulls took %s", time.Since(start).Round(time.Millisecond))
}
