package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// containerd is a containerd daemon with its own root, state and socket.
type containerd struct {
	Sock string
	Proc *testenv.Proc
	ctr  string
}

// startContainerd runs containerd with everything under dir.
func startContainerd(t *testing.T, dir string) *containerd {
	t.Helper()
	bin := testenv.RequireTool(t, "containerd")
	ctr := testenv.RequireTool(t, "ctr")
	sock := filepath.Join(dir, "containerd.sock")
	cfg := filepath.Join(dir, "config.toml")
	testenv.WriteFile(t, cfg, fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %[3]q

[ttrpc]
  address = "%[3]s.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "opt")))
	p := testenv.Start(t, "containerd "+filepath.Base(dir), filepath.Join(dir, "containerd.log"), testenv.Env(), bin, "--config", cfg)
	c := &containerd{Sock: sock, Proc: p, ctr: ctr}
	testenv.WaitUntil(t, p, 30*time.Second, "containerd socket", func() error {
		return testenv.Run(5*time.Second, testenv.Env(), ctr, "--address", sock, "version").Err
	})
	return c
}

// run runs ctr against this daemon in namespace e2e.
func (c *containerd) run(t *testing.T, args ...string) string {
	t.Helper()
	args = append([]string{"--address", c.Sock, "--namespace", "e2e"}, args...)
	return string(testenv.MustRun(t, 120*time.Second, testenv.Env(), c.ctr, args...).Stdout)
}

// imageDigests maps image name to target digest from `ctr image ls`.
func (c *containerd) imageDigests(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(c.run(t, "image", "ls"), "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 3 {
			out[f[0]] = f[2]
		}
	}
	return out
}

// writeHostsTOML mirrors host through the mirror; the fallback server is the dead port.
func writeHostsTOML(t *testing.T, certsDir, host, mirrorAddr string) {
	t.Helper()
	testenv.WriteFile(t, filepath.Join(certsDir, host, "hosts.toml"), fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, testenv.DeadAddr, mirrorAddr))
}

// TestContainerd pulls with ctr through hosts.toml mirrors (containerd adds
// ?ns=<registry> to every request), then pulls again into a fresh content
// store with both upstreams stopped.
func TestContainerd(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "containerd")
	testenv.RequireTool(t, "ctr")
	// The runc shim paths are hard-coded under /run/containerd.
	testenv.RemoveIfCreated(t, "/run/containerd")
	e := newEnv(t, envOptions{TagTTL: "5m"})
	fx := e.Fx
	certs := filepath.Join(e.Dir, "certs.d")
	writeHostsTOML(t, certs, "docker.io", e.Mirror.Addr)
	writeHostsTOML(t, certs, "ghcr.io", e.Mirror.Addr)
	c := startContainerd(t, filepath.Join(e.Dir, "c1"))

	pullAndCheck := func(t *testing.T, c *containerd, ref string, m *manifest) {
		t.Helper()
		c.run(t, "image", "pull", "--hosts-dir", certs, ref)
		if got := c.imageDigests(t)[ref]; got != m.Digest {
			t.Errorf("ctr image ls: %s has digest %q, want %s", ref, got, m.Digest)
		}
		// Single-layer images: the snapshot's chain ID is the layer's diff ID.
		img := m
		if len(m.Children) > 0 {
			img = m.child("linux/amd64")
		}
		if snaps := c.run(t, "snapshot", "ls"); !strings.Contains(snaps, img.DiffIDs[0]) {
			t.Errorf("%s was not unpacked: no snapshot %s in\n%s", ref, img.DiffIDs[0], snaps)
		}
	}

	t.Run("pull docker.io", func(t *testing.T) {
		pullAndCheck(t, c, "docker.io/library/alpine:3", fx.Alpine)
		pullAndCheck(t, c, "docker.io/library/busybox:1.36", fx.Busybox)
		pullAndCheck(t, c, "docker.io/acme/tool:v1", fx.Tool)
	})

	t.Run("pull ghcr.io", func(t *testing.T) {
		requireOutpost(t)
		pullAndCheck(t, c, "ghcr.io/org/app:1", fx.App)
	})

	t.Run("content fetch arm64", func(t *testing.T) {
		c.run(t, "content", "fetch", "--platform", "linux/arm64", "--hosts-dir", certs, "docker.io/library/alpine:latest")
		content := c.run(t, "content", "ls", "-q")
		arm := fx.Alpine.child("linux/arm64")
		for _, d := range []string{arm.Digest, arm.Config.Digest, arm.Layers[0].Digest} {
			if !strings.Contains(content, d) {
				t.Errorf("content store lacks %s after content fetch --platform linux/arm64", d)
			}
		}
	})

	t.Run("offline into a fresh store", func(t *testing.T) {
		requireOutpost(t)
		e.Hub.Stop()
		e.GHCR.Stop()
		c.Proc.Stop()
		fresh := startContainerd(t, filepath.Join(e.Dir, "c2"))
		pullAndCheck(t, fresh, "docker.io/library/alpine:3", fx.Alpine)
		pullAndCheck(t, fresh, "docker.io/library/busybox:1.36", fx.Busybox)
		pullAndCheck(t, fresh, "ghcr.io/org/app:1", fx.App)
	})
}
