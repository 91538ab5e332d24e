package e2e

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// TestMirrorOffline mirrors chosen tags and platforms from a CNCF
// distribution registry ahead of time (nobody pulls them first), stops the
// upstream, and pulls what was mirrored with crane and containerd. What the
// filters left out is not there.
func TestMirrorOffline(t *testing.T) {
	requireOutpost(t)
	crane := testenv.RequireTool(t, "crane")
	dir := t.TempDir()
	fx := fixtures()
	hub := startUpstream(t, filepath.Join(dir, "hub"), "docker.io", fx.tags())
	o := testenv.StartOutpost(t, filepath.Join(dir, "outpost"), testenv.OutpostConfig{
		Admin: true,
		Level: "info",
		Upstreams: []testenv.Upstream{
			{Name: "docker.io", URL: hub.URL(), Default: true, TagTTL: "0s", RequestTimeout: "4s"},
		},
		Extra: `mirrors:
  - name: site
    upstream: docker.io
    repositories: [library/alpine, acme/tool]
    tags: {include: ['^[0-9v]']}
    platforms: [linux/amd64]
`,
	})
	resp, err := http.Post("http://"+o.Admin+"/mirrors/site/run", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Report struct {
			Images int      `json:"images"`
			Failed []string `json:"failed"`
		} `json:"report"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 200 || body.Report.Images != 2 || len(body.Report.Failed) != 0 {
		t.Fatalf("mirror run: %s %+v", resp.Status, body.Report)
	}
	// A second run finds nothing to do and fetches no blob or manifest.
	before := len(hub.Front.Requests())
	resp, err = http.Post("http://"+o.Admin+"/mirrors/site/run", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, r := range hub.Front.Requests()[before:] {
		if r.Method == "GET" && (strings.Contains(r.Path, "/blobs/") || strings.Contains(r.Path, "/manifests/")) {
			t.Errorf("second mirror run: %s", r)
		}
	}

	hub.Stop()
	env := testenv.Env("DOCKER_CONFIG=" + t.TempDir())
	pull := func(ref, platform string) testenv.Result {
		out := filepath.Join(t.TempDir(), "layout")
		return testenv.Run(60*time.Second, env, crane, "pull", "--platform", platform, "--format", "oci", ref, out)
	}
	if res := pull(o.Addr+"/library/alpine:3", "linux/amd64"); res.Err != nil {
		t.Errorf("offline crane pull of the mirrored alpine:3 amd64: %s", res)
	}
	if res := pull(o.Addr+"/acme/tool:v1", "linux/amd64"); res.Err != nil {
		t.Errorf("offline crane pull of the mirrored acme/tool:v1: %s", res)
	}
	if res := pull(o.Addr+"/library/alpine:3", "linux/arm64"); res.Err == nil {
		t.Error("the arm64 child, left out by the platform filter, pulled offline")
	}
	if res := pull(o.Addr+"/library/busybox:1.36", "linux/amd64"); res.Err == nil {
		t.Error("busybox, not mirrored, pulled offline")
	}

	t.Run("containerd", func(t *testing.T) {
		testenv.RequireRoot(t)
		testenv.RequireTool(t, "containerd")
		testenv.RemoveIfCreated(t, "/run/containerd")
		certs := filepath.Join(dir, "certs.d")
		writeHostsTOML(t, certs, "docker.io", o.Addr)
		c := startContainerd(t, filepath.Join(dir, "c1"))
		for _, ref := range []struct {
			name string
			m    *manifest
		}{{"docker.io/library/alpine:3", fx.Alpine}, {"docker.io/acme/tool:v1", fx.Tool}} {
			c.run(t, "image", "pull", "--platform", "linux/amd64", "--hosts-dir", certs, ref.name)
			if got := c.imageDigests(t)[ref.name]; got != ref.m.Digest {
				t.Errorf("ctr image ls: %s has digest %q, want %s", ref.name, got, ref.m.Digest)
			}
		}
	})
}
