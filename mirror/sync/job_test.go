package sync_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/outpost-oci/outpost/mirror"
	msync "github.com/outpost-oci/outpost/mirror/sync"
	"github.com/outpost-oci/outpost/store"
)

// upstream is go-containerregistry's registry behind a handler that logs
// every request and can inject faults.
type upstream struct {
	srv *httptest.Server
	reg http.Handler

	mu       stdsync.Mutex
	requests []string // "METHOD path [Range]"
	fault    func(w http.ResponseWriter, r *http.Request) bool
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true))}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		line := r.Method + " " + r.URL.Path
		if rg := r.Header.Get("Range"); rg != "" {
			line += " " + rg
		}
		u.requests = append(u.requests, line)
		fault := u.fault
		u.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		u.reg.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) host() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	u.mu.Lock()
	u.fault = f
	u.mu.Unlock()
}

// take returns the requests logged since the last call.
func (u *upstream) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.requests
	u.requests = nil
	return r
}

func count(reqs []string, prefix string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func countContaining(reqs []string, method, part string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, method+" ") && strings.Contains(r, part) {
			n++
		}
	}
	return n
}

var platforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64"},
	{OS: "linux", Architecture: "arm", Variant: "v7"},
}

// pushIndex pushes a multi-arch index (one random image per platform) as
// repo:tag and returns it.
func (u *upstream) pushIndex(t *testing.T, repo, tag string) v1.ImageIndex {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	for _, p := range platforms {
		img, err := random.Image(2048, 2)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	ref, err := name.ParseReference(u.host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	return idx
}

func (u *upstream) pushImage(t *testing.T, repo, tag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(u.host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
}

func openStore(t *testing.T, root string) *store.Store {
	t.Helper()
	st, err := store.Open(root, store.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newMirror(t *testing.T, u *upstream) *mirror.Upstream {
	t.Helper()
	up, err := mirror.New(mirror.Options{Name: "registry.test", URLs: []string{u.srv.URL}, Insecure: true,
		RetryWaitMin: 10 * time.Millisecond, RetryWaitMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	return up
}

type jobOptions func(*msync.Options)

func newJob(t *testing.T, up *mirror.Upstream, st *store.Store, repos []string, opts ...jobOptions) *msync.Job {
	t.Helper()
	o := msync.Options{Name: "test", Upstream: up, Registry: "registry.test", Store: st, Repositories: repos}
	for _, f := range opts {
		f(&o)
	}
	j, err := msync.NewJob(o)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func mustFilter(t *testing.T, include, exclude []string, semver string, latest int) *msync.TagFilter {
	t.Helper()
	f, err := msync.NewTagFilter(include, exclude, semver, latest)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func digestOf(t *testing.T, x interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// content lists the manifests and blobs of an index's children on the
// given platforms (all when nil).
type content struct {
	manifests, blobs []v1.Hash
}

func contentOf(t *testing.T, idx v1.ImageIndex, want func(v1.Platform) bool) content {
	t.Helper()
	var c content
	c.manifests = append(c.manifests, digestOf(t, idx))
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range im.Manifests {
		if !want(*desc.Platform) {
			continue
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		c.manifests = append(c.manifests, desc.Digest)
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		c.blobs = append(c.blobs, m.Config.Digest)
		for _, l := range m.Layers {
			c.blobs = append(c.blobs, l.Digest)
		}
	}
	return c
}

func TestSyncSelectsAndSecondRunDownloadsNothing(t *testing.T) {
	u := newUpstream(t)
	app := map[string]v1.ImageIndex{}
	for _, tag := range []string{"v1.0.0", "v1.1.0", "v2.0.0", "v2.1.0-rc1", "v3.0.0", "latest"} {
		app[tag] = u.pushIndex(t, "org/app", tag)
	}
	tool := u.pushIndex(t, "org/team/tool", "1.0")
	other := u.pushIndex(t, "other/x", "1.0")
	st := openStore(t, t.TempDir())
	defer st.Close()
	arm := []v1.Platform{{OS: "linux", Architecture: "arm64"}, {OS: "linux", Architecture: "arm", Variant: "v7"}}
	job := newJob(t, newMirror(t, u), st, []string{"org/**"}, func(o *msync.Options) {
		o.Tags = mustFilter(t, []string{`^v?[0-9]+\.[0-9]+`}, []string{`-rc`}, ">=1.0.0 <3.0.0", 2)
		o.Platforms = arm
	})
	u.take()

	rep, err := job.Run(context.Background())
	if err != nil || rep.Err() != nil {
		t.Fatalf("run: %v, %v", err, rep.Err())
	}
	reqs := u.take()
	if rep.Images != 3 || rep.Unchanged != 0 {
		t.Errorf("images %d unchanged %d, want 3 and 0", rep.Images, rep.Unchanged)
	}
	isArm := func(p v1.Platform) bool { return p.Architecture != "amd64" }
	want := map[string]content{}
	for _, tag := range []string{"v2.0.0", "v1.1.0"} {
		want["registry.test/org/app:"+tag] = contentOf(t, app[tag], isArm)
	}
	want["registry.test/org/team/tool:1.0"] = contentOf(t, tool, isArm)
	var manifests, blobs int
	for ref, c := range want {
		repo, tag, _ := strings.Cut(ref, ":")
		got, err := st.Tag(repo, tag)
		if err != nil || got.Digest != c.manifests[0] {
			t.Errorf("tag %s: %v %v, want %s", ref, got.Digest, err, c.manifests[0])
		}
		for _, d := range c.manifests {
			if !st.HasManifest(d) {
				t.Errorf("%s: manifest %s not stored", ref, d)
			}
		}
		for _, d := range c.blobs {
			if !st.HasBlob(d) {
				t.Errorf("%s: blob %s not stored", ref, d)
			}
		}
		manifests += len(c.manifests)
		blobs += len(c.blobs)
	}
	// Nothing else: not the amd64 children, not the other tags or repos.
	notWanted := []v1.ImageIndex{app["v1.0.0"], app["v2.1.0-rc1"], app["v3.0.0"], app["latest"], other}
	for _, idx := range notWanted {
		if st.HasManifest(digestOf(t, idx)) {
			t.Errorf("index %s stored, not selected", digestOf(t, idx))
		}
	}
	for ref, idx := range map[string]v1.ImageIndex{"v2.0.0": app["v2.0.0"], "tool": tool} {
		amd := contentOf(t, idx, func(p v1.Platform) bool { return p.Architecture == "amd64" })
		for _, d := range append(amd.manifests[1:], amd.blobs...) {
			if st.HasManifest(d) || st.HasBlob(d) {
				t.Errorf("%s: amd64 content %s stored", ref, d)
			}
		}
	}
	if got := countContaining(reqs, "GET", "/manifests/"); got != manifests {
		t.Errorf("%d manifest GETs, want %d (each once)", got, manifests)
	}
	if got := countContaining(reqs, "GET", "/blobs/"); got != blobs {
		t.Errorf("%d blob GETs, want %d (each once)", got, blobs)
	}
	if rep.Manifests != manifests || rep.Blobs != blobs {
		t.Errorf("report: %d manifests %d blobs, want %d and %d", rep.Manifests, rep.Blobs, manifests, blobs)
	}

	rep, err = job.Run(context.Background())
	if err != nil || rep.Err() != nil {
		t.Fatalf("second run: %v, %v", err, rep.Err())
	}
	reqs = u.take()
	if n := countContaining(reqs, "GET", "/manifests/") + countContaining(reqs, "GET", "/blobs/"); n != 0 || rep.Images != 0 || rep.Unchanged != 3 {
		t.Errorf("second run: %d manifest/blob GETs, %d images, %d unchanged; want 0, 0, 3\n%s", n, rep.Images, rep.Unchanged, strings.Join(reqs, "\n"))
	}
	if got := countContaining(reqs, "HEAD", "/manifests/"); got != 3 {
		t.Errorf("second run: %d manifest HEADs, want 3", got)
	}

	// Every mirrored tag is pinned; one the filter no longer selects loses
	// its pin, and a mirror taken out of the config loses all of them.
	pinned := func() map[string]v1.Hash {
		pins, err := st.Pins("mirror:test")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]v1.Hash{}
		for _, p := range pins {
			m[p.Repo+":"+p.Tag] = p.Digest
		}
		return m
	}
	got := pinned()
	if len(got) != 3 {
		t.Errorf("pins %v, want the 3 mirrored tags", got)
	}
	for ref, c := range want {
		if got[ref] != c.manifests[0] {
			t.Errorf("pin of %s: %v, want %s", ref, got[ref], c.manifests[0])
		}
	}
	narrower := newJob(t, newMirror(t, u), st, []string{"org/**"}, func(o *msync.Options) {
		o.Tags = mustFilter(t, []string{`^v?[0-9]+\.[0-9]+`}, []string{`-rc`}, ">=1.0.0 <3.0.0", 1)
		o.Platforms = arm
	})
	if rep, err := narrower.Run(context.Background()); err != nil || rep.Err() != nil {
		t.Fatal(err, rep.Err())
	}
	if got := pinned(); len(got) != 2 || got["registry.test/org/app:v1.1.0"].Hex != "" {
		t.Errorf("pins after narrowing the filter: %v", got)
	}
	if n, err := msync.DropPinsExcept(st, []string{"other"}); err != nil || n != 2 || len(pinned()) != 0 {
		t.Errorf("dropping the pins of a removed mirror: %d %v, left %v", n, err, pinned())
	}
}

func TestMovedTagKeepsOldImageUntilNewIsComplete(t *testing.T) {
	u := newUpstream(t)
	old := u.pushIndex(t, "app", "stable")
	st := openStore(t, t.TempDir())
	defer st.Close()
	job := newJob(t, newMirror(t, u), st, []string{"app"})
	if rep, err := job.Run(context.Background()); err != nil || rep.Err() != nil || rep.Images != 1 {
		t.Fatalf("first run: %v %v %+v", err, rep.Err(), rep)
	}
	moved := u.pushIndex(t, "app", "stable")
	newBlobs := contentOf(t, moved, func(v1.Platform) bool { return true }).blobs
	broken := newBlobs[len(newBlobs)-1].String()
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+broken) && r.Method == http.MethodGet {
			http.Error(w, "no", http.StatusNotFound)
			return true
		}
		return false
	})
	rep, err := job.Run(context.Background())
	if err != nil || len(rep.Failed) != 1 {
		t.Fatalf("run with a missing blob: %v, failed %v", err, rep.Failed)
	}
	if got, _ := st.Tag("registry.test/app", "stable"); got.Digest != digestOf(t, old) {
		t.Fatalf("tag moved to %s before the new image was complete", got.Digest)
	}
	if st.HasManifest(digestOf(t, moved)) {
		t.Fatal("the incomplete new index is visible")
	}
	u.setFault(nil)
	if rep, err := job.Run(context.Background()); err != nil || rep.Err() != nil || rep.Images != 1 {
		t.Fatalf("run after the fault: %v %v %+v", err, rep.Err(), rep)
	}
	if got, _ := st.Tag("registry.test/app", "stable"); got.Digest != digestOf(t, moved) {
		t.Fatalf("tag at %s, want the moved %s", got.Digest, digestOf(t, moved))
	}
}

// A run cut off in the middle of a blob (serve shutting down, or a kill)
// leaves its staging; the next run resumes the blob with Range from where
// it stopped.
func TestInterruptedBlobResumesWithRange(t *testing.T) {
	u := newUpstream(t)
	img, err := random.Image(4<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	u.pushImage(t, "big", "v1", img)
	layers, _ := img.Layers()
	layer := digestOf(t, layers[0])
	root := t.TempDir()
	st := openStore(t, root)
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan struct{})
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) || r.Header.Get("Range") != "" {
			return false
		}
		rc, _ := layers[0].Compressed()
		defer rc.Close()
		size, _ := layers[0].Size()
		w.Header().Set("Content-Length", fmt.Sprint(size))
		w.WriteHeader(http.StatusOK)
		io.CopyN(w, rc, size/2)
		w.(http.Flusher).Flush()
		close(sent)
		<-r.Context().Done() // hold the rest back until the client goes
		return true
	})
	job := newJob(t, newMirror(t, u), st, []string{"big"})
	go func() {
		<-sent
		time.Sleep(200 * time.Millisecond) // let the half arrive
		cancel()
	}()
	if _, err := job.Run(ctx); err == nil {
		t.Fatal("the cut-off run reported success")
	}
	if _, err := st.Tag("registry.test/big", "v1"); err == nil {
		t.Fatal("tag visible after an interrupted sync")
	}
	st.Close()
	entries, _ := os.ReadDir(root + "/.sync")
	if len(entries) != 1 {
		t.Fatalf(".sync holds %d sessions, want the one to resume", len(entries))
	}

	u.setFault(nil)
	u.take()
	st = openStore(t, root)
	defer st.Close()
	job = newJob(t, newMirror(t, u), st, []string{"big"})
	rep, err := job.Run(context.Background())
	if err != nil || rep.Err() != nil || rep.Images != 1 {
		t.Fatalf("resumed run: %v %v %+v", err, rep.Err(), rep)
	}
	size, _ := layers[0].Size()
	var ranged []string
	for _, r := range u.take() {
		if strings.Contains(r, "/blobs/"+layer.String()) && strings.HasPrefix(r, "GET") {
			ranged = append(ranged, r)
		}
	}
	if len(ranged) != 1 || !strings.Contains(ranged[0], "bytes=") || strings.HasSuffix(ranged[0], "bytes=0-") {
		t.Fatalf("layer requests on resume: %q, want one Range request from the byte where it stopped", ranged)
	}
	var from int64
	fmt.Sscanf(ranged[0][strings.Index(ranged[0], "bytes=")+len("bytes="):], "%d-", &from)
	if from < size/4 || from > size/2 {
		t.Errorf("resumed from byte %d of %d, want about half", from, size)
	}
	if !st.HasBlob(layer) {
		t.Fatal("layer not stored after the resumed run")
	}
	entries, _ = os.ReadDir(root + "/.sync")
	if len(entries) != 0 {
		t.Errorf(".sync holds %d sessions after the run", len(entries))
	}
}

func TestTagFilter(t *testing.T) {
	tags := []string{"latest", "1.0", "v1.2.3", "1.10.0", "2.0.0-rc1", "2.0.0", "3.1", "edge", "v0.9"}
	for _, tc := range []struct {
		include, exclude []string
		semver           string
		latest           int
		want             []string
	}{
		{want: tags},
		{include: []string{`^v`}, want: []string{"v1.2.3", "v0.9"}},
		{exclude: []string{`-rc`, `^latest$`, `^edge$`}, want: []string{"1.0", "v1.2.3", "1.10.0", "2.0.0", "3.1", "v0.9"}},
		{semver: ">=1.0.0 <3.0.0", want: []string{"2.0.0", "1.10.0", "v1.2.3", "1.0"}},
		{latest: 2, want: []string{"3.1", "2.0.0"}},
		{include: []string{`^[0-9]`}, exclude: []string{`-rc`}, semver: ">=1.0.0", latest: 3, want: []string{"3.1", "2.0.0", "1.10.0"}},
	} {
		f, err := msync.NewTagFilter(tc.include, tc.exclude, tc.semver, tc.latest)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Select(tags); !slices.Equal(got, tc.want) {
			t.Errorf("%+v: got %v", tc, got)
		}
	}
	if _, err := msync.NewTagFilter([]string{"("}, nil, "", 0); err == nil {
		t.Error("a bad regular expression was accepted")
	}
}

// An image that names one layer twice (old Docker images repeat the empty
// layer) and an index whose children share a layer sync like any other.
func TestRepeatedLayers(t *testing.T) {
	u := newUpstream(t)
	layer, err := random.Layer(64<<10, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer, layer)
	if err != nil {
		t.Fatal(err)
	}
	u.pushImage(t, "app", "twice", img)
	other, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	other, _ = mutate.Config(other, v1.Config{Env: []string{"X=1"}})
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &platforms[0]}},
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &platforms[1]}})
	ref, _ := name.ParseReference(u.host()+"/app:shared", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, t.TempDir())
	defer st.Close()
	u.take()
	rep, err := newJob(t, newMirror(t, u), st, []string{"app"}).Run(context.Background())
	// The index comes first and brings the image that "twice" names too.
	if err != nil || rep.Err() != nil || rep.Images+rep.Unchanged != 2 {
		t.Fatalf("%v %v %+v", err, rep.Err(), rep)
	}
	for _, tag := range []string{"twice", "shared"} {
		if _, err := st.Tag("registry.test/app", tag); err != nil {
			t.Errorf("tag %s: %v", tag, err)
		}
	}
	if n := countContaining(u.take(), "GET", "/blobs/"+digestOf(t, layer).String()); n != 1 {
		t.Errorf("the shared layer was downloaded %d times", n)
	}
}

// With referrers wanted, an image's OCI referrers (a signature here) and
// its cosign tag come along; without, they do not.
func TestReferrersComeAlong(t *testing.T) {
	for _, want := range []bool{true, false} {
		u := newUpstream(t)
		img, err := random.Image(1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		u.pushImage(t, "app", "v1", img)
		d := digestOf(t, img)
		size, _ := img.Size()
		mt, _ := img.MediaType()
		sig, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		sig = mutate.MediaType(sig, types.OCIManifestSchema1)
		sig = mutate.Subject(sig, v1.Descriptor{MediaType: mt, Size: size, Digest: d}).(v1.Image)
		sigRef, _ := name.ParseReference(u.host()+"/app@"+digestOf(t, sig).String(), name.Insecure)
		if err := remote.Write(sigRef, sig); err != nil {
			t.Fatal(err)
		}
		cosign, _ := random.Image(128, 1)
		cosignTag := "sha256-" + d.Hex + ".sig"
		u.pushImage(t, "app", cosignTag, cosign)

		st := openStore(t, t.TempDir())
		job := newJob(t, newMirror(t, u), st, []string{"app"}, func(o *msync.Options) {
			o.Referrers = want
			o.Tags = mustFilter(t, []string{`^v`}, nil, "", 0)
		})
		if rep, err := job.Run(context.Background()); err != nil || rep.Err() != nil {
			t.Fatal(err, rep.Err())
		}
		refs, _ := st.Referrers("registry.test/app", d)
		_, cosignErr := st.Tag("registry.test/app", cosignTag)
		if got := st.HasManifest(digestOf(t, sig)) && len(refs) == 1 && cosignErr == nil; got != want {
			t.Errorf("referrers %v: signature stored %v, referrers %v, cosign tag %v", want,
				st.HasManifest(digestOf(t, sig)), refs, cosignErr)
		}
		if want && st.HasManifest(digestOf(t, cosign)) == false {
			t.Error("the cosign signature's manifest is not stored")
		}
		st.Close()
	}
}
