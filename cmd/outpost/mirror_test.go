package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/store"
)

// mirrorConfig is config() plus an admin listener (filled in later) and
// one mirror of org/app's v* tags for linux/arm64.
func mirrorConfig(u *upstream, admin string) string {
	return config(u, "1h") + fmt.Sprintf(`admin: {address: "%s"}
mirrors:
  - name: edge
    upstream: docker.io
    repositories: [org/app]
    tags: {include: ['^v']}
    platforms: [linux/arm64]
`, admin)
}

func runMirror(t *testing.T, admin, name string) map[string]any {
	t.Helper()
	resp, err := http.Post("http://"+admin+"/mirrors/"+name+"/run", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("run %s: %s %v %v", name, resp.Status, body, err)
	}
	return body["report"].(map[string]any)
}

// A mirror runs inside serve on demand (the admin API that `outpost sync`
// uses), and what it brought serves with the upstream gone.
func TestMirrorInServeServesOffline(t *testing.T) {
	up := newUpstream(t)
	v1idx, v2idx := multiArch(t), multiArch(t)
	up.push("org/app", "v1", v1idx)
	up.push("org/app", "v2", v2idx)
	up.push("org/app", "dev", multiArch(t))
	o := startOutpost(t, mirrorConfig(up, "127.0.0.1:0"), "")
	rep := runMirror(t, o.admin, "edge")
	if rep["images"].(float64) != 2 || rep["failed"] != nil {
		t.Fatalf("report %v, want 2 images and no failures", rep)
	}
	up.setFault(fault503)
	arm := v1.Platform{OS: "linux", Architecture: "arm64"}
	for _, tag := range []string{"v1", "v2"} {
		img, err := remote.Image(o.ref(t, "org/app:"+tag), remote.WithPlatform(arm))
		if err != nil {
			t.Fatalf("offline pull of %s for arm64: %v", tag, err)
		}
		d, _ := img.Digest()
		pullAll(t, o.ref(t, "org/app@"+d.String()))
	}
	if _, err := remote.Image(o.ref(t, "org/app:v1"), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err == nil {
		t.Error("the amd64 child, not mirrored, pulled with the upstream down")
	}
	if code, _, _ := o.get(t, "GET", "/v2/org/app/manifests/dev"); code == http.StatusOK {
		t.Error("the unselected tag dev is served offline")
	}
	resp, err := http.Get("http://" + o.admin + "/mirrors")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"mirror": "edge"`) || !strings.Contains(string(b), `"images": 2`) {
		t.Errorf("GET /mirrors: %s", b)
	}
	cfgPath := filepath.Join(t.TempDir(), "outpost.yaml")
	os.WriteFile(cfgPath, []byte(strings.ReplaceAll(mirrorConfig(up, o.admin), "%ROOT%", o.root)), 0o600)
	var out bytes.Buffer
	if err := runStatus(context.Background(), cfgPath, false, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"UPSTREAM", "docker.io", "edge", "2 new, 0 same", "ok"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("outpost status lacks %q:\n%s", want, out.String())
		}
	}
	families := o.scrape(t)
	if v := value(families, "outpost_mirror_images_synced_total", map[string]string{"mirror": "edge"}); v != 2 {
		t.Errorf("outpost_mirror_images_synced_total = %v, want 2", v)
	}
	if v := value(families, "outpost_mirror_runs_total", map[string]string{"mirror": "edge", "result": "ok"}); v != 1 {
		t.Errorf("outpost_mirror_runs_total{result=ok} = %v, want 1", v)
	}
}

// `outpost sync --once` runs against a store nobody holds, and asks the
// running serve when it holds the store; --dry-run fetches nothing.
func TestSyncCommand(t *testing.T) {
	up := newUpstream(t)
	up.push("org/app", "v1", multiArch(t))
	root := t.TempDir()
	cfgPath := filepath.Join(t.TempDir(), "outpost.yaml")
	write := func(admin string) {
		if err := os.WriteFile(cfgPath, []byte(strings.ReplaceAll(mirrorConfig(up, admin), "%ROOT%", root)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("127.0.0.1:1")
	var out, errOut bytes.Buffer
	if err := runSync(context.Background(), cfgPath, nil, true, true, &out, &errOut); err != nil {
		t.Fatalf("dry run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "1 image(s) to fetch") || up.requests("GET blobs") != 0 || up.requests("GET manifests") != 0 {
		t.Fatalf("dry run printed %q and fetched %d blobs, %d manifests", out.String(), up.requests("GET blobs"), up.requests("GET manifests"))
	}
	out.Reset()
	if err := runSync(context.Background(), cfgPath, []string{"edge"}, true, false, &out, &errOut); err != nil {
		t.Fatalf("sync --once: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "mirror edge: 1 image(s) synced") {
		t.Errorf("sync printed %q", out.String())
	}
	if err := runSync(context.Background(), cfgPath, []string{"nope"}, true, false, &out, &errOut); err == nil || !strings.Contains(err.Error(), `no mirror named "nope" (have: edge)`) {
		t.Errorf("unknown mirror: %v", err)
	}

	// Without --once it keeps running the jobs on their schedules, in the
	// foreground, until stopped.
	up.push("org/app", "v3", multiArch(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := runSync(ctx, cfgPath, nil, false, false, &out, &errOut); err != nil {
		t.Fatalf("sync in the foreground: %v", err)
	}
	if st, err := store.Open(root, store.Options{}); err != nil {
		t.Fatal(err)
	} else {
		if _, err := st.Tag("docker.io/org/app", "v3"); err != nil {
			t.Errorf("v3 after sync in the foreground: %v", err)
		}
		st.Close()
	}

	up.push("org/app", "v2", multiArch(t))
	o := startOutpost(t, strings.ReplaceAll(mirrorConfig(up, "127.0.0.1:0"), "%ROOT%", root), root)
	write(o.admin)
	out.Reset()
	if err := runSync(context.Background(), cfgPath, nil, true, false, &out, &errOut); err != nil {
		t.Fatalf("sync while serve runs: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "asking it") || !strings.Contains(out.String(), "1 image(s) synced, 2 up to date") {
		t.Errorf("sync via serve printed %q", out.String())
	}
	if code, _, _ := o.get(t, "HEAD", "/v2/org/app/manifests/v2"); code != http.StatusOK {
		t.Errorf("v2 after the delegated sync: %d", code)
	}
}

// SIGKILL in the middle of a mirror's blob download: after a restart only
// complete images are served, and the next run resumes the blob with a
// Range request from where it stopped; the bytes sent add up to the blob
// once.
func TestKillDuringSyncResumesWithRange(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 1<<20, 1)
	up.push("org/app", "v1", img)
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()
	size, _ := layers[0].Size()
	var mu sync.Mutex
	var ranges []string
	var sent, resumed int64 // bytes of the first request, of the resumed one
	trickle := true         // 16 KiB every 50 ms until the kill
	up.wrap = func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
				mu.Lock()
				ranges = append(ranges, r.Header.Get("Range"))
				mu.Unlock()
				n := &sent
				if r.Header.Get("Range") != "" {
					n = &resumed
				}
				w = &countingWriter{ResponseWriter: w, n: n, mu: &mu, trickle: &trickle}
			}
			h.ServeHTTP(w, r)
		})
	}
	admin := freePort(t)
	cfg := strings.Replace(mirrorConfig(up, admin), "platforms: [linux/arm64]\n", "", 1)
	root := t.TempDir()
	p, cfgPath := startProcess(t, cfg, root)
	go http.Post("http://"+admin+"/mirrors/edge/run", "", nil) // cut off by the kill
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := sent
		mu.Unlock()
		if n > size/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes of the layer sent in 20 s", n)
		}
	}
	p.cmd.Process.Kill()
	p.wait(t, 5*time.Second)
	mu.Lock()
	before := sent
	mu.Unlock()

	st, err := store.Open(root, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Tag("docker.io/org/app", "v1"); err == nil {
		t.Error("the tag is visible after a sync killed half way")
	}
	if err := st.CheckInvariants(); err != nil {
		t.Error(err)
	}
	st.Close()
	parts, _ := filepath.Glob(filepath.Join(root, ".sync", "*", "sha256-"+layer.Hex+".part"))
	if len(parts) != 1 {
		t.Fatalf(".sync after the kill holds %d part files of the layer, want the one to resume", len(parts))
	}

	mu.Lock()
	trickle = false
	mu.Unlock()
	p2 := restartProcess(t, cfgPath, root)
	rep := runMirror(t, admin, "edge")
	if rep["images"].(float64) != 1 {
		t.Fatalf("resumed run: %v", rep)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ranges) != 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") || strings.HasPrefix(ranges[1], "bytes=0-") {
		t.Fatalf("layer requests: %q, want a full GET then one Range from where it stopped", ranges)
	}
	var from int64
	fmt.Sscanf(strings.TrimPrefix(ranges[1], "bytes="), "%d-", &from)
	if from <= 0 || from > before {
		t.Errorf("resumed from byte %d; %d had been sent before the kill", from, before)
	}
	if resumed != size-from {
		t.Errorf("the resumed request sent %d bytes, want the %d missing", resumed, size-from)
	}
	if code, _ := p2.get(t, "/v2/org/app/manifests/v1"); code != http.StatusOK {
		t.Errorf("v1 after the resumed sync: %d", code)
	}
}

// countingWriter counts the bytes a response sends, trickling them while
// *trickle is set.
type countingWriter struct {
	http.ResponseWriter
	n       *int64
	mu      *sync.Mutex
	trickle *bool
}

func (w *countingWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		w.mu.Lock()
		slow := *w.trickle
		w.mu.Unlock()
		k := len(p)
		if slow {
			k = min(k, 16<<10)
		}
		n, err := w.ResponseWriter.Write(p[:k])
		total += n
		w.mu.Lock()
		*w.n += int64(n)
		w.mu.Unlock()
		if err != nil {
			return total, err
		}
		if slow {
			w.Flush()
			time.Sleep(50 * time.Millisecond)
		}
		p = p[k:]
	}
	return total, nil
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// SIGKILL at many points of a sync (during blob downloads, between blobs
// and manifests, during promotion): after every restart no tag points at
// anything missing and .sync holds only this mirror's resumable work; the
// runs after the kills complete the mirror.
func TestKillsAtManyPointsOfASync(t *testing.T) {
	up := newUpstream(t)
	var wantTags []string
	for i := range 4 {
		tag := fmt.Sprintf("v%d", i)
		up.push("org/app", tag, randomImage(t, 256<<10, 3))
		wantTags = append(wantTags, tag)
	}
	up.setFault(faultSlow) // 300 ms before each blob, then 64 KiB every 20 ms
	admin := freePort(t)
	cfg := strings.Replace(mirrorConfig(up, admin), "platforms: [linux/arm64]\n", "", 1)
	root := t.TempDir()
	p, cfgPath := startProcess(t, cfg, root)
	for i, after := range []time.Duration{150, 400, 700, 1000, 1300, 1700, 2200} {
		if i > 0 {
			p = restartProcess(t, cfgPath, root)
		}
		go http.Post("http://"+admin+"/mirrors/edge/run", "", nil)
		time.Sleep(after * time.Millisecond)
		p.cmd.Process.Kill()
		p.wait(t, 5*time.Second)

		st, err := store.Open(root, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CheckInvariants(); err != nil {
			t.Errorf("kill %d after %dms: %v", i, after, err)
		}
		for _, tag := range wantTags {
			if tg, err := st.Tag("docker.io/org/app", tag); err == nil {
				if n, err := missingBlobs(st, tg.Digest); err != nil || n > 0 {
					t.Errorf("kill %d: tag %s visible with %d blob(s) missing (%v)", i, tag, n, err)
				}
			}
		}
		st.Close()
		// At most one session per image (its manifests) and one per blob.
		entries, _ := os.ReadDir(filepath.Join(root, ".sync"))
		if bound := len(wantTags) * (1 + 4); len(entries) > bound {
			t.Errorf("kill %d: .sync holds %d sessions, more than the %d images and their blobs", i, len(entries), bound)
		}
	}
	up.setFault(faultNone)
	p = restartProcess(t, cfgPath, root)
	rep := runMirror(t, admin, "edge")
	if rep["failed"] != nil {
		t.Fatalf("the run after the kills: %v", rep)
	}
	for _, tag := range wantTags {
		if code, _ := p.get(t, "/v2/org/app/manifests/"+tag); code != http.StatusOK {
			t.Errorf("%s after the kills and a full run: %d", tag, code)
		}
	}
	p.cmd.Process.Kill()
	p.wait(t, 5*time.Second)
	if entries, _ := os.ReadDir(filepath.Join(root, ".sync")); len(entries) != 0 {
		t.Errorf(".sync holds %d sessions after a complete run", len(entries))
	}
}

// missingBlobs counts the blobs of stored image manifest d the store lacks.
func missingBlobs(st *store.Store, d v1.Hash) (int, error) {
	m, err := st.PeekManifest(d)
	if err != nil {
		return 1, err
	}
	b := m.Bytes
	var man v1.Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		return 1, err
	}
	n := 0
	for _, desc := range append([]v1.Descriptor{man.Config}, man.Layers...) {
		if !st.HasBlob(desc.Digest) {
			n++
		}
	}
	return n, nil
}

// A mirror job against an upstream that has stopped answering does not
// slow what the box serves from its store.
func TestHangingSyncDoesNotStallServing(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 64<<10, 1)
	d := up.push("org/app", "v1", img)
	up.push("org/app", "v2", randomImage(t, 64<<10, 1))
	o := startOutpost(t, mirrorConfig(up, "127.0.0.1:0"), "")
	pullAll(t, o.ref(t, "org/app@"+d.String()))
	up.setFault(faultHang)
	go http.Post("http://"+o.admin+"/mirrors/edge/run", "", nil)
	time.Sleep(200 * time.Millisecond) // the job is waiting on upstream now
	for range 20 {
		start := time.Now()
		pullAll(t, o.ref(t, "org/app@"+d.String()))
		if el := time.Since(start); el > 500*time.Millisecond {
			t.Fatalf("a cached pull took %v while a sync hung on upstream", el)
		}
	}
}

// serve runs the mirrors by itself (the first run within mirrorFirstRun of
// the start), and a reload replaces the jobs with the new config's.
func TestServeRunsMirrorsAndReloadReplacesThem(t *testing.T) {
	old := mirrorFirstRun
	mirrorFirstRun = 100 * time.Millisecond
	defer func() { mirrorFirstRun = old }()
	up := newUpstream(t)
	up.push("org/app", "v1", multiArch(t))
	up.push("org/tool", "v1", randomImage(t, 1024, 1))
	o := startOutpost(t, mirrorConfig(up, "127.0.0.1:0"), "")
	waitFor(t, func() bool {
		code, _, _ := o.get(t, "HEAD", "/v2/org/app/manifests/v1")
		return code == http.StatusOK && len(o.app.status().Mirrors) == 1 && o.app.status().Mirrors[0].Last != nil
	})
	cfg, err := configsParse(strings.ReplaceAll(strings.Replace(mirrorConfig(up, "127.0.0.1:0"), "name: edge", "name: tools", 1), "org/app", "org/tool"), o.root)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.app.reload(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		st := o.app.status()
		return len(st.Mirrors) == 1 && st.Mirrors[0].Mirror == "tools" && st.Mirrors[0].Last != nil
	})
	if pins, _ := o.app.store.Pins(""); len(pins) != 1 || pins[0].Owner != "mirror:tools" {
		t.Errorf("pins after the reload: %+v, want only the new mirror's", pins)
	}
}

func configsParse(yaml, root string) (*configs.Config, error) {
	return configs.Parse("test.yaml", []byte(strings.ReplaceAll(yaml, "%ROOT%", root)))
}

// A pull-through fill and a mirror run of the same blob at the same time
// download it once.
func TestFillAndSyncShareOneDownload(t *testing.T) {
	up := newUpstream(t)
	img := randomImage(t, 1<<20, 1)
	up.push("org/app", "v1", img)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	o := startOutpost(t, strings.Replace(mirrorConfig(up, "127.0.0.1:0"), "platforms: [linux/arm64]\n", "", 1), "")
	up.setFault(faultSlow) // the fill takes a second or more
	up.resetCounts()
	pulled := make(chan error, 1)
	go func() {
		resp, err := http.Get(o.url("/v2/org/app/blobs/" + d.String()))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		pulled <- err
	}()
	waitFor(t, func() bool { return up.requests("GET blobs") == 1 })
	rep := runMirror(t, o.admin, "edge")
	if err := <-pulled; err != nil {
		t.Fatal(err)
	}
	if rep["images"].(float64) < 1 {
		t.Fatalf("report %v", rep)
	}
	// The layer once (shared), the config once (only the mirror wants it).
	if n := up.requests("GET blobs"); n != 2 {
		t.Errorf("%d blob downloads from upstream, want 2: the layer once for both, the config", n)
	}
}

// outpost images lists what the store holds, pinned or not and by whom,
// from a running instance and from a stopped store alike.
func TestImagesCommand(t *testing.T) {
	up := newUpstream(t)
	up.push("org/app", "v1", multiArch(t))
	d := up.push("org/other", "1", randomImage(t, 4096, 1))
	o := startOutpost(t, mirrorConfig(up, "127.0.0.1:0"), "")
	runMirror(t, o.admin, "edge")
	pullAll(t, o.ref(t, "org/other@"+d.String()))
	cfgPath := filepath.Join(t.TempDir(), "outpost.yaml")
	os.WriteFile(cfgPath, []byte(strings.ReplaceAll(mirrorConfig(up, o.admin), "%ROOT%", o.root)), 0o600)
	check := func(when string) {
		var out bytes.Buffer
		if err := runImages(context.Background(), cfgPath, "size", false, &out); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		for _, want := range []string{"docker.io/org/app:v1", "mirror:edge", "docker.io/org/other@sha256:", "2 image(s), 1 pinned"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s: outpost images lacks %q:\n%s", when, want, out.String())
			}
		}
		out.Reset()
		if err := runImages(context.Background(), cfgPath, "age", true, &out); err != nil {
			t.Fatal(err)
		}
		var body struct {
			Images []store.Image `json:"images"`
		}
		if err := json.Unmarshal(out.Bytes(), &body); err != nil || len(body.Images) != 2 {
			t.Errorf("%s: --json: %v %s", when, err, out.String())
		}
	}
	check("while serve runs")
	o.stop()
	check("on the stopped store")
	if err := runImages(context.Background(), cfgPath, "name", false, io.Discard); err == nil {
		t.Error("--sort name was accepted")
	}
}
