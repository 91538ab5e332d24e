package sync_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	msync "github.com/outpost-oci/outpost/mirror/sync"
	"github.com/outpost-oci/outpost/store"
)

// The bandwidth cap holds a transfer of some seconds to within 10%.
func TestBandwidthCap(t *testing.T) {
	u := newUpstream(t)
	img, err := random.Image(1536<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	u.pushImage(t, "app", "v1", img)
	st := openStore(t, t.TempDir())
	defer st.Close()
	const rate = 512 << 10
	job := newJob(t, newMirror(t, u), st, []string{"app"}, func(o *msync.Options) { o.Bandwidth = rate })
	start := time.Now()
	rep, err := job.Run(context.Background())
	elapsed := time.Since(start)
	if err != nil || rep.Err() != nil {
		t.Fatal(err, rep.Err())
	}
	var blobBytes int64
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		blobBytes += n
	}
	cfg, _ := img.RawConfigFile()
	blobBytes += int64(len(cfg))
	want := time.Duration(float64(blobBytes) / rate * float64(time.Second))
	if elapsed < want*9/10 || elapsed > want*11/10 {
		t.Errorf("%d bytes at %d B/s took %v, want %v ±10%%", blobBytes, rate, elapsed, want)
	}
}

// fakeWindow is a daily window the test opens and closes.
type fakeWindow struct{ open atomic.Bool }

func (w *fakeWindow) Contains(time.Time) bool    { return w.open.Load() }
func (w *fakeWindow) Next(t time.Time) time.Time { return t.Add(time.Second) }

// Outside the window a job does not start, and a running one pauses; it
// goes on when the window opens.
func TestWindowHoldsAndPauses(t *testing.T) {
	u := newUpstream(t)
	img, err := random.Image(1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	u.pushImage(t, "app", "v1", img)
	st := openStore(t, t.TempDir())
	defer st.Close()
	w := &fakeWindow{}
	var got atomic.Int64
	job := newJob(t, newMirror(t, u), st, []string{"app"}, func(o *msync.Options) {
		o.Window = w
		o.Bandwidth = 256 << 10
		o.Progress = countingProgress{&got}
	})
	u.take()
	done := make(chan error, 1)
	go func() {
		rep, err := job.Run(context.Background())
		if err == nil {
			err = rep.Err()
		}
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond)
	if reqs := u.take(); len(reqs) != 0 {
		t.Fatalf("requests outside the window: %v", reqs)
	}
	w.open.Store(true)
	for got.Load() < 200<<10 {
		time.Sleep(10 * time.Millisecond)
	}
	w.open.Store(false)
	time.Sleep(300 * time.Millisecond) // a read in flight may finish
	paused := got.Load()
	time.Sleep(1500 * time.Millisecond)
	if now := got.Load(); now != paused {
		t.Fatalf("%d bytes arrived while the window was closed", now-paused)
	}
	w.open.Store(true)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the job did not finish after the window opened again")
	}
	if _, err := st.Tag("registry.test/app", "v1"); err != nil {
		t.Fatal(err)
	}

	// An operator's run (outpost sync) goes at once, window or not.
	w.open.Store(false)
	small, _ := random.Image(1024, 1)
	u.pushImage(t, "app", "v2", small)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if rep, err := job.RunNow(ctx); err != nil || rep.Err() != nil || rep.Images != 1 {
		t.Fatalf("RunNow with the window closed: %v %v %+v", err, rep.Err(), rep)
	}
}

type countingProgress struct{ n *atomic.Int64 }

func (p countingProgress) BlobStarted(string, v1.Hash, int64, int64) msync.BlobProgress {
	return countingBlob(p)
}

type countingBlob struct{ n *atomic.Int64 }

func (b countingBlob) Add(n int)  { b.n.Add(int64(n)) }
func (b countingBlob) Done(error) {}

// A 429 with Retry-After is waited out, not a failed image.
func TestRetryAfterHonoured(t *testing.T) {
	u := newUpstream(t)
	u.pushIndex(t, "app", "v1")
	st := openStore(t, t.TempDir())
	defer st.Close()
	var refused atomic.Int32
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") && refused.Add(1) == 1 {
			w.Header().Set("Retry-After", "2")
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS"}]}`, http.StatusTooManyRequests)
			return true
		}
		return false
	})
	job := newJob(t, newMirror(t, u), st, []string{"app"})
	start := time.Now()
	rep, err := job.Run(context.Background())
	if err != nil || rep.Err() != nil || rep.Images != 1 {
		t.Fatalf("%v %v %+v", err, rep.Err(), rep)
	}
	if elapsed := time.Since(start); elapsed < 2*time.Second {
		t.Errorf("finished after %v: the 2 s of Retry-After were not waited", elapsed)
	}
}

// With the announced pull allowance at the reserve, the job pauses before
// its next manifest GET and looks again with a HEAD.
func TestRateLimitReservePauses(t *testing.T) {
	u := newUpstream(t)
	u.pushIndex(t, "app", "v1")
	st := openStore(t, t.TempDir())
	defer st.Close()
	var heads atomic.Int32
	var mu stdsync.Mutex
	var early []string
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			switch {
			case r.Method == http.MethodHead && heads.Add(1) >= 2:
				w.Header().Set("RateLimit-Remaining", "100;w=21600")
			case r.Method == http.MethodHead:
				w.Header().Set("RateLimit-Remaining", "5;w=21600")
			case heads.Load() < 2:
				mu.Lock()
				early = append(early, r.URL.Path)
				mu.Unlock()
			}
		}
		return false
	})
	job := newJob(t, newMirror(t, u), st, []string{"app"}, func(o *msync.Options) {
		o.RateLimitMin = 10
		o.RateLimitRetry = 300 * time.Millisecond
	})
	start := time.Now()
	rep, err := job.Run(context.Background())
	if err != nil || rep.Err() != nil || rep.Images != 1 {
		t.Fatalf("%v %v %+v", err, rep.Err(), rep)
	}
	if len(early) != 0 || time.Since(start) < 300*time.Millisecond {
		t.Errorf("manifest GETs %v before the allowance was seen back, after %v", early, time.Since(start))
	}
}

// A blob a pull-through fill is downloading is not downloaded again by a
// sync: the job waits for the fill, and uses it.
func TestSyncSharesAFillsDownload(t *testing.T) {
	u := newUpstream(t)
	img, err := random.Image(256<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	u.pushImage(t, "app", "v1", img)
	layers, _ := img.Layers()
	layer := digestOf(t, layers[0])
	size, _ := layers[0].Size()
	st := openStore(t, t.TempDir())
	defer st.Close()

	// A fill of the layer in progress, as the cache runs one.
	fill, err := st.Begin(store.KindFill, "registry.test/app")
	if err != nil {
		t.Fatal(err)
	}
	defer fill.Abort()
	w, other, err := fill.Blob(layer, size)
	if err != nil || other != nil {
		t.Fatal(err, other)
	}
	rc, _ := layers[0].Compressed()
	defer rc.Close()
	buf := make([]byte, size)
	if _, err := rc.Read(buf[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(buf[:1]); err != nil {
		t.Fatal(err)
	}
	u.take()
	done := make(chan error, 1)
	job := newJob(t, newMirror(t, u), st, []string{"app"})
	go func() {
		rep, err := job.Run(context.Background())
		if err == nil {
			err = rep.Err()
		}
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the job finished while the fill was still running: %v", err)
	default:
	}
	rest, _ := io.ReadAll(rc)
	if _, err := w.Write(rest); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fill.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := countContaining(u.take(), "GET", "/blobs/"+layer.String()); n != 0 {
		t.Errorf("the sync downloaded the layer %d time(s) besides the fill", n)
	}
	if _, err := st.Tag("registry.test/app", "v1"); err != nil {
		t.Fatal(err)
	}
}

// The scheduler runs a job every interval plus up to the jitter.
func TestSchedulerIntervalAndJitter(t *testing.T) {
	u := newUpstream(t)
	u.pushIndex(t, "app", "v1")
	st := openStore(t, t.TempDir())
	defer st.Close()
	var mu stdsync.Mutex
	var runs []time.Time
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			mu.Lock()
			runs = append(runs, time.Now())
			mu.Unlock()
		}
		return false
	})
	job := newJob(t, newMirror(t, u), st, []string{"app"})
	s := msync.NewScheduler([]msync.Schedule{{Job: job, Interval: 200 * time.Millisecond, Jitter: 200 * time.Millisecond}}, 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	s.Run(ctx)
	mu.Lock()
	defer mu.Unlock()
	if len(runs) < 6 || len(runs) > 13 {
		t.Fatalf("%d runs in 2.5 s with a 200 ms interval and 200 ms jitter", len(runs))
	}
	var spread []time.Duration
	for i := 1; i < len(runs); i++ {
		gap := runs[i].Sub(runs[i-1])
		if gap < 200*time.Millisecond || gap > 600*time.Millisecond {
			t.Errorf("gap %d: %v, want 200-400 ms plus the run", i, gap)
		}
		spread = append(spread, gap)
	}
	same := true
	for _, g := range spread[1:] {
		if (g - spread[0]).Abs() > 20*time.Millisecond {
			same = false
		}
	}
	if same {
		t.Errorf("gaps %v: no jitter", spread)
	}
	if st := s.Status(); len(st) != 1 || st[0].Last == nil || st[0].Last.Unchanged != 1 {
		t.Errorf("status %+v", st)
	}
}

// Jobs of one upstream share its download slots.
func TestUpstreamSlotsBoundDownloads(t *testing.T) {
	u := newUpstream(t)
	for _, tag := range []string{"a", "b"} {
		img, err := random.Image(64<<10, 4)
		if err != nil {
			t.Fatal(err)
		}
		u.pushImage(t, "app"+tag, "v1", img)
	}
	var now, peak atomic.Int32
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			n := now.Add(1)
			defer now.Add(-1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	up := newMirror(t, u)
	slots := make(chan struct{}, 2)
	var wg stdsync.WaitGroup
	for _, repo := range []string{"appa", "appb"} {
		job := newJob(t, up, st, []string{repo}, func(o *msync.Options) { o.Name = repo; o.Slots = slots; o.Parallel = 3 })
		wg.Add(1)
		go func() {
			defer wg.Done()
			if rep, err := job.Run(context.Background()); err != nil || rep.Err() != nil {
				t.Error(err, rep.Err())
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p != 2 {
		t.Errorf("at most %d blob downloads at once, want the 2 slots used and never more", p)
	}
}

// Two jobs whose images share two layers in opposite order finish: a
// verified blob is published at once, so neither waits on the other's
// image (found by review: they used to wait on each other for ever).
func TestJobsSharingBlobsDoNotWaitOnEachOther(t *testing.T) {
	u := newUpstream(t)
	l1, _ := random.Layer(256<<10, types.DockerLayer)
	l2, _ := random.Layer(256<<10, types.DockerLayer)
	p, _ := mutate.AppendLayers(empty.Image, l1, l2)
	n, _ := mutate.AppendLayers(empty.Image, l2, l1)
	u.pushImage(t, "p", "v1", p)
	u.pushImage(t, "n", "v1", n)
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			time.Sleep(300 * time.Millisecond)
		}
		return false
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	up := newMirror(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg stdsync.WaitGroup
	for _, repo := range []string{"p", "n"} {
		job := newJob(t, up, st, []string{repo}, func(o *msync.Options) { o.Name = repo; o.Parallel = 1 })
		wg.Add(1)
		go func() {
			defer wg.Done()
			if rep, err := job.Run(ctx); err != nil || rep.Err() != nil || rep.Images != 1 {
				t.Errorf("job %s: %v %v", repo, err, rep.Err())
			}
		}()
	}
	wg.Wait()
}

// A blob download that fails ends its write at once: a pull of that blob
// does not join a dead download while the image's other blobs go on.
func TestFailedBlobDoesNotLinger(t *testing.T) {
	u := newUpstream(t)
	l1, _ := random.Layer(64<<10, types.DockerLayer)
	l2, _ := random.Layer(64<<10, types.DockerLayer)
	img, _ := mutate.AppendLayers(empty.Image, l1, l2)
	u.pushImage(t, "p", "v1", img)
	d1, d2 := digestOf(t, l1), digestOf(t, l2)
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, d1.String()):
			http.Error(w, "gone", http.StatusNotFound)
			return true
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, d2.String()):
			time.Sleep(2 * time.Second) // a long sibling download
		}
		return false
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		newJob(t, newMirror(t, u), st, []string{"p"}).Run(context.Background())
	}()
	time.Sleep(time.Second)
	if p := st.Join(d1); p != nil {
		p.Release()
		t.Error("the failed download is still registered while its sibling runs")
	}
	<-done
}

// RunNow on a scheduler that has stopped (replaced by a reload, or
// Outpost stopping) says so at once instead of hanging.
func TestRunNowAfterStop(t *testing.T) {
	u := newUpstream(t)
	st := openStore(t, t.TempDir())
	defer st.Close()
	s := msync.NewScheduler([]msync.Schedule{{Job: newJob(t, newMirror(t, u), st, []string{"p"}), Interval: time.Hour}}, time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	cancel()
	<-done
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	if _, err := s.RunNow(rctx, "test"); !errors.Is(err, msync.ErrStopped) {
		t.Errorf("RunNow after the stop: %v, want ErrStopped at once", err)
	}
}
