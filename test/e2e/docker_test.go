package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// dockerdHostPaths are what dockerd 20.10 creates on the host whatever its
// data-root and exec-root (the key is Docker's old engine ID).
var dockerdHostPaths = []string{
	"/etc/docker/key.json",
	"/run/docker/plugins",
	"/run/containerd", // the runc shim paths of the containerd dockerd uses
}

// dockerd is a Docker daemon with everything under one directory.
type dockerd struct {
	Dir  string
	Proc *testenv.Proc
	env  []string // for the docker CLI
	cli  string
}

// startDockerd runs dockerd with its own data-root, exec-root, pidfile and
// socket under dir, no networking, vfs storage, the given containerd and
// mirror as its only registry mirror. It is stopped with SIGTERM (and
// waited for, so that it unmounts its data-root) when the test ends.
func startDockerd(t *testing.T, dir, containerdSock, mirrorAddr string) *dockerd {
	t.Helper()
	bin := testenv.RequireTool(t, "dockerd")
	cli := testenv.RequireTool(t, "docker")
	for _, p := range dockerdHostPaths {
		testenv.RemoveIfCreated(t, p)
	}
	sock := filepath.Join(dir, "docker.sock")
	cfg := map[string]any{
		"registry-mirrors":    []string{"http://" + mirrorAddr},
		"insecure-registries": []string{mirrorAddr},
		"data-root":           filepath.Join(dir, "root"),
		"exec-root":           filepath.Join(dir, "exec"),
		"pidfile":             filepath.Join(dir, "docker.pid"),
		"hosts":               []string{"unix://" + sock},
		"containerd":          containerdSock,
		"bridge":              "none",
		"iptables":            false,
		"ip6tables":           false,
		"ip-forward":          false,
		"ip-masq":             false,
		"storage-driver":      "vfs",
		"log-level":           "debug",
	}
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "daemon.json")
	testenv.WriteFile(t, cfgPath, string(raw))
	p := testenv.Start(t, "dockerd", filepath.Join(dir, "dockerd.log"), testenv.Env(), bin, "--config-file", cfgPath)
	// Registered after Start's cleanup, so it runs first: a SIGKILLed
	// dockerd would leave its data-root bind mount behind.
	t.Cleanup(func() { stopDockerd(t, p, dir) })
	d := &dockerd{Dir: dir, Proc: p, cli: cli, env: testenv.Env(
		"DOCKER_HOST=unix://"+sock,
		"DOCKER_CONFIG="+filepath.Join(dir, "cli"),
		"HOME="+dir,
	)}
	testenv.WaitUntil(t, p, 60*time.Second, "dockerd API", func() error {
		return testenv.Run(5*time.Second, d.env, cli, "version").Err
	})
	return d
}

// stopDockerd sends SIGTERM and waits for dockerd to exit, then makes sure
// no mount under dir is left (unmounting any, which is an error).
func stopDockerd(t *testing.T, p *testenv.Proc, dir string) {
	if !p.Exited() {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.Done():
		case <-time.After(60 * time.Second):
			t.Errorf("dockerd did not exit within 60 s of SIGTERM; killing it")
			p.Stop()
		}
	}
	left, err := mountsUnder(dir)
	if err != nil {
		t.Errorf("reading mounts: %v", err)
	}
	for i := len(left) - 1; i >= 0; i-- { // innermost first
		t.Errorf("dockerd left %s mounted", left[i])
		if err := syscall.Unmount(left[i], syscall.MNT_DETACH); err != nil {
			t.Errorf("umount %s: %v", left[i], err)
		}
	}
}

// mountsUnder lists the mount points at or below dir, in mount order.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint ...; octal escapes in paths
		// do not matter for the temporary directories used here.
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}

// run runs the docker CLI against this daemon.
func (d *dockerd) run(t *testing.T, args ...string) string {
	t.Helper()
	return string(testenv.MustRun(t, 90*time.Second, d.env, d.cli, args...).Stdout)
}

// TestDocker pulls Docker Hub images with a real dockerd whose only
// registry mirror is Outpost (the README's daemon.json), checks what it
// stored, then pulls a removed image again with the upstream stopped.
// dockerd falls back to registry-1.docker.io when the mirror fails, which
// its proxy variables send to the dead port: only Outpost can have served
// a successful pull.
func TestDocker(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "dockerd")
	testenv.RequireTool(t, "docker")
	testenv.RequireTool(t, "containerd")
	e := newEnv(t, envOptions{TagTTL: "5m"})
	fx := e.Fx
	c := startContainerd(t, filepath.Join(e.Dir, "containerd"))
	start := time.Now()
	d := startDockerd(t, filepath.Join(e.Dir, "docker"), c.Sock, e.Mirror.Addr)
	t.Logf("dockerd up in %s", time.Since(start).Round(time.Millisecond))

	if got := d.run(t, "info", "--format", "{{json .RegistryConfig.Mirrors}}"); !strings.Contains(got, e.Mirror.Addr) {
		t.Fatalf("docker info: registry mirrors %s, want http://%s/", strings.TrimSpace(got), e.Mirror.Addr)
	}

	// pull runs `docker pull [flags] ref` and checks that dockerd got the
	// manifest the tag names (top: the index of a multi-arch image) and
	// stored img: its ID is img's config digest, its architecture img's,
	// and its first repo digest is repo@top. dockerd 20.10 cannot move a
	// digest reference to another image ("Image ID for digest … changed …,
	// cannot update"), so an image pulled from an index whose digest already
	// names another platform's image (digestTaken) has no repo digest.
	pull := func(t *testing.T, ref, repo string, top, img *manifest, digestTaken bool, flags ...string) {
		t.Helper()
		out := d.run(t, append(append([]string{"pull"}, flags...), ref)...)
		if !strings.Contains(out, "Digest: "+top.Digest+"\n") {
			t.Errorf("docker pull %s: output lacks Digest: %s:\n%s", ref, top.Digest, out)
		}
		got := strings.TrimSpace(d.run(t, "image", "inspect", "--format", "{{.Id}} {{.Architecture}}", ref))
		if want := img.Config.Digest + " " + strings.TrimPrefix(img.Platform, "linux/"); got != want {
			t.Errorf("docker image inspect %s: ID and architecture %s, want %s", ref, got, want)
		}
		if digestTaken {
			got := strings.TrimSpace(d.run(t, "image", "inspect", "--format", "{{len .RepoDigests}}", ref))
			if got != "0" {
				t.Errorf("docker image inspect %s: %s repo digests, want 0 (dockerd 20.10)", ref, got)
			}
			return
		}
		got = strings.TrimSpace(d.run(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", ref))
		if want := repo + "@" + top.Digest; got != want {
			t.Errorf("docker image inspect %s: repo digest %s, want %s", ref, got, want)
		}
	}
	sawPull := func(t *testing.T, repo, tag string, img *manifest) {
		t.Helper()
		paths := []string{"/v2/" + repo + "/manifests/" + tag}
		for _, b := range append([]blob{img.Config}, img.Layers...) {
			paths = append(paths, "/v2/"+repo+"/blobs/"+b.Digest)
		}
		for _, p := range paths {
			if e.Hub.Front.Count("", p) == 0 {
				t.Errorf("docker.io upstream never saw %s; it saw %v", p, e.Hub.Front.Requests())
			}
		}
	}

	t.Run("pull alpine:3", func(t *testing.T) {
		amd := fx.Alpine.child("linux/amd64")
		pull(t, "alpine:3", "alpine", fx.Alpine, amd, false)
		sawPull(t, "library/alpine", "3", amd)
	})

	t.Run("pull arm64 alpine:latest", func(t *testing.T) {
		// alpine@<index> already names the amd64 image if alpine:3 was pulled.
		taken := testenv.Run(30*time.Second, d.env, d.cli, "image", "inspect", "alpine:3").Err == nil
		arm := fx.Alpine.child("linux/arm64")
		pull(t, "alpine:latest", "alpine", fx.Alpine, arm, taken, "--platform", "linux/arm64")
		sawPull(t, "library/alpine", "latest", arm)
	})

	t.Run("pull acme/tool:v1", func(t *testing.T) {
		pull(t, "acme/tool:v1", "acme/tool", fx.Tool, fx.Tool, false)
		sawPull(t, "acme/tool", "v1", fx.Tool)
	})

	t.Run("offline pull after rmi", func(t *testing.T) {
		requireOutpost(t)
		amd := fx.Alpine.child("linux/amd64")
		out := d.run(t, "rmi", "alpine:3")
		if !strings.Contains(out, "Deleted: "+amd.Config.Digest) {
			t.Fatalf("docker rmi alpine:3 did not delete the image %s:\n%s", amd.Config.Digest, out)
		}
		addr := e.Hub.Addr()
		e.Hub.Stop()
		if err := waitClosed(addr); err != nil {
			t.Fatal(err)
		}
		pull(t, "alpine:3", "alpine", fx.Alpine, amd, false)
		images := d.run(t, "image", "ls", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
		for _, want := range []string{
			"alpine:3 " + amd.Config.Digest,
			"alpine:latest " + fx.Alpine.child("linux/arm64").Config.Digest,
			"acme/tool:v1 " + fx.Tool.Config.Digest,
		} {
			if !slices.Contains(strings.Split(strings.TrimSpace(images), "\n"), want) {
				t.Errorf("docker image ls lacks %q:\n%s", want, images)
			}
		}
	})
	t.Logf("dockerd start and pulls took %s", time.Since(start).Round(time.Millisecond))
}
