package badday

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/store"
	"github.com/outpost-oci/outpost/test/testenv"
)

// smallDisk mounts a tmpfs of size MiB and returns its path.
func smallDisk(t *testing.T, mib int) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", mib), "tmpfs", dir).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fillDisk writes a file in dir until the filesystem is full.
func fillDisk(t *testing.T, path string) string {
	t.Helper()
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, "filler")
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for _, n := range []int{4096, 512, 1} { // the last partial blocks
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return path
}

// A disk that fills up never crashes Outpost: new content is refused below
// the reserve with a clear error, a log line and a metric, everything cached
// is still served, a disk filled to the last byte by someone else changes
// nothing of that, Outpost starts again on the full disk, and caching
// resumes by itself once space is freed.
func TestDiskFillsUp(t *testing.T) {
	disk := smallDisk(t, 40)
	reg := startRegistry(t)
	const images = 10
	for i := 0; i < images; i++ {
		push(t, reg.addr(), fmt.Sprintf("acme/app%d", i), "1", image(t, 4<<20, 1))
	}
	push(t, reg.addr(), "acme/later", "1", image(t, 64<<10, 1))
	root := filepath.Join(disk, "data")
	cfg := testenv.OutpostConfig{
		Admin: true, Level: "info", Root: root, Reserve: "8MiB",
		Upstreams: []testenv.Upstream{{Name: "docker.io", URL: reg.srv.URL, Default: true, TagTTL: "0s"}},
	}
	start := func(name string) *testenv.Server {
		return testenv.StartOutpost(t, filepath.Join(t.TempDir(), name), cfg)
	}
	o := start("first")

	var cached []string
	refused := 0
	for i := 0; i < images; i++ {
		repo := fmt.Sprintf("acme/app%d", i)
		err := pull(o.URL(""), repo, "1")
		var pe *pullError
		switch {
		case err == nil:
			cached = append(cached, repo)
		case errors.As(err, &pe) && pe.status == 503 && strings.Contains(string(pe.body), "UNAVAILABLE") &&
			strings.Contains(string(pe.body), "disk is full"):
			refused++
		default:
			t.Fatalf("pull %s: %v", repo, err)
		}
	}
	t.Logf("cached %d images of 4 MiB on a 40 MiB disk, refused %d", len(cached), refused)
	if len(cached) < 3 || refused == 0 {
		t.Fatalf("cached %d, refused %d: the reserve did not work as it should", len(cached), refused)
	}
	if metric(t, o.Admin, "outpost_store_full", nil) != 1 || metric(t, o.Admin, "outpost_fills_refused_total", map[string]string{"reason": "disk_full"}) == 0 {
		t.Error("the full disk shows in no metric")
	}
	if !strings.Contains(testenv.Tail(o.Log, 2000), "new content is not cached until space is freed") {
		t.Error("no log line says the disk is full")
	}
	servesCached := func(o *testenv.Server, when string) {
		t.Helper()
		for _, repo := range cached {
			if err := pull(o.URL(""), repo, "1"); err != nil {
				t.Fatalf("%s: cached %s: %v", when, repo, err)
			}
		}
	}
	servesCached(o, "below the reserve")

	// Someone else fills the disk to the last byte.
	filler := fillDisk(t, disk)
	servesCached(o, "disk full")
	if err := pull(o.URL(""), "acme/later", "1"); err == nil {
		t.Error("a new image was stored on a full disk")
	}
	if o.Exited() {
		t.Fatalf("outpost died on a full disk:\n%s", testenv.Tail(o.Log, 40))
	}
	// A crash on the full disk (its metadata log not flushed), then a start.
	o.Signal(syscall.SIGKILL)
	<-o.Done()
	o = start("after a crash")
	servesCached(o, "started on a full disk after a crash")
	// A clean stop on the full disk, then a start.
	o.Stop()
	if o.Err() != nil {
		t.Fatalf("outpost did not stop cleanly on a full disk: %v\n%s", o.Err(), testenv.Tail(o.Log, 40))
	}
	o = start("after a stop")
	servesCached(o, "started on a full disk after a stop")

	// The worst case: the ballast files are gone too (eaten by whatever
	// filled the disk), and Outpost crashes. It starts anyway, giving up
	// cached blobs to keep its metadata consistent, and serves the rest.
	for _, b := range []string{"ballast.running", "ballast.restart"} {
		os.Remove(filepath.Join(root, b))
	}
	fillDisk(t, filepath.Join(disk, "more"))
	o.Signal(syscall.SIGKILL)
	<-o.Done()
	o = start("after a crash with no ballast")
	served := 0
	for _, repo := range cached {
		if pull(o.URL(""), repo, "1") == nil {
			served++
		}
	}
	if served < len(cached)-2 || !strings.Contains(testenv.Tail(o.Log, 2000), "removed cached blobs") {
		t.Fatalf("after a crash on a full disk with no ballast: %d of %d images served\n%s", served, len(cached), testenv.Tail(o.Log, 20))
	}
	t.Logf("after a crash on a full disk with no ballast, %d of %d cached images still served", served, len(cached))
	os.Remove(filepath.Join(disk, "more"))

	// Space comes back: caching resumes without a restart, and what was
	// given up comes back on request.
	os.Remove(filler)
	testenv.WaitUntil(t, o.Proc, 30*time.Second, "caching resumes", func() error { return pull(o.URL(""), "acme/later", "1") })
	servesCached(o, "after space came back")
	o.Stop()
	if o.Err() != nil {
		t.Fatalf("exit: %v", o.Err())
	}
	s, err := store.Open(root, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
