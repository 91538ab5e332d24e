package bench

// load.go is the load generator: whole-corpus pulls like a real client, hot
// blob throughput, hot manifest request rate with latency percentiles, and
// the 32-concurrent-cold-requests fan-out. Every loop is bounded by a
// duration and a context deadline.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/outpost-oci/outpost/test/testenv"
)

const (
	pullParallelism = 3  // concurrent blob downloads of one pull, like containerd/docker
	hotConns        = 32 // connections for the hot tests and the cold fan-out
	warmup          = 500 * time.Millisecond
	requestTimeout  = 2 * time.Minute // per request of a pull
)

// newClient returns an HTTP client that keeps enough idle connections for
// hotConns workers, never uses a proxy and never asks for compression.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        4 * hotConns,
		MaxIdleConnsPerHost: 2 * hotConns,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		ReadBufferSize:      64 << 10,
	}}
}

func closeClient(c *http.Client) { c.Transport.(*http.Transport).CloseIdleConnections() }

// getVerified GETs url, reads the whole body and checks its sha256 and size.
func getVerified(ctx context.Context, c *http.Client, url, accept, wantDigest string, wantSize int64) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: reading body: %w", url, err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got != wantDigest || n != wantSize {
		return fmt.Errorf("GET %s: got %s (%d bytes), want %s (%d bytes)", url, got, n, wantDigest, wantSize)
	}
	if accept != "" { // a manifest: the registry must name its digest
		if dcd := resp.Header.Get("Docker-Content-Digest"); dcd != "" && dcd != wantDigest {
			return fmt.Errorf("GET %s: Docker-Content-Digest %s, want %s", url, dcd, wantDigest)
		}
	}
	return nil
}

// pull fetches every image like a client: the manifest by tag, then all
// blobs (config and layers) pullParallelism at a time, each fully read and
// digest-checked. Images are pulled one after another.
func pull(ctx context.Context, base string, images []image) (time.Duration, error) {
	c := newClient()
	defer closeClient(c)
	t0 := time.Now()
	for _, im := range images {
		if err := getVerified(ctx, c, base+im.manifestPath(im.tag), testenv.ManifestAccept, im.manifestDigest, int64(len(im.manifest))); err != nil {
			return 0, err
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(pullParallelism)
		for _, b := range im.blobs {
			g.Go(func() error {
				return getVerified(gctx, c, base+im.blobPath(b.digest), "", b.digest, b.size)
			})
		}
		if err := g.Wait(); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// fanout sends hotConns simultaneous GETs for one blob that the server has
// not cached yet (after fetching its manifest by tag, as a client would).
func fanout(ctx context.Context, base string, im image) error {
	c := newClient()
	defer closeClient(c)
	if err := getVerified(ctx, c, base+im.manifestPath(im.tag), testenv.ManifestAccept, im.manifestDigest, int64(len(im.manifest))); err != nil {
		return err
	}
	b := im.layers[0]
	start := make(chan struct{})
	errs := make(chan error, hotConns)
	var wg sync.WaitGroup
	for range hotConns {
		wg.Go(func() {
			<-start
			errs <- getVerified(ctx, c, base+im.blobPath(b.digest), "", b.digest, b.size)
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// throughput is the result of a hot blob run.
type throughput struct {
	bytes   int64
	elapsed time.Duration
	reqs    int64 // completed responses
	errs    int64
}

func (t throughput) gibps() float64 { return float64(t.bytes) / t.elapsed.Seconds() / (1 << 30) }

// hotBlob has hotConns workers GET url over and over for warmup+dur. Bytes
// are counted as they arrive, so a 64 MiB response still in flight at the
// deadline counts for what has been received; only bytes after the warmup
// count.
func hotBlob(ctx context.Context, url string, size int64, dur time.Duration) (throughput, error) {
	c := newClient()
	defer closeClient(c)
	ctx, cancel := context.WithTimeout(ctx, warmup+dur+10*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()

	var total, reqs, errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range hotConns {
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for runCtx.Err() == nil {
				n, err := getCounting(runCtx, c, url, buf, &total)
				if runCtx.Err() != nil {
					return // cut off by the deadline: not an error
				}
				if err == nil && n != size {
					err = fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
					time.Sleep(10 * time.Millisecond) // keep a broken server from spinning us
					continue
				}
				reqs.Add(1)
			}
		})
	}
	if !sleepCtx(ctx, warmup) {
		return throughput{}, ctx.Err()
	}
	b0, r0, t0 := total.Load(), reqs.Load(), time.Now()
	sleepCtx(ctx, dur)
	res := throughput{bytes: total.Load() - b0, reqs: reqs.Load() - r0, elapsed: time.Since(t0)}
	stop()
	wg.Wait()
	res.errs = errs.Load()
	if e, _ := firstErr.Load().(error); e != nil {
		return res, fmt.Errorf("%d errors, first: %w", res.errs, e)
	}
	return res, nil
}

// getCounting GETs url and discards the body, adding bytes to total as
// they arrive. It returns the body length.
func getCounting(ctx context.Context, c *http.Client, url string, buf []byte, total *atomic.Int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		total.Add(int64(m))
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// rate is the result of a hot manifest run.
type rate struct {
	reqs    int64
	elapsed time.Duration
	p50     time.Duration
	p99     time.Duration
	errs    int64
}

func (r rate) perSec() float64 { return float64(r.reqs) / r.elapsed.Seconds() }

// maxSamples bounds the latency samples kept per worker.
const maxSamples = 1 << 18

// hotManifest has hotConns workers GET url (with the manifest Accept
// header) over and over for warmup+dur, checking status and length, and
// records the latency of every request that starts and ends inside the
// measured window. It uses fasthttp's client: on two cores net/http's client
// costs several times more CPU per small request and would be the
// bottleneck (it caps nginx at about a third of what fasthttp measures).
func hotManifest(ctx context.Context, url string, size int64, dur time.Duration) (rate, error) {
	c := &fasthttp.Client{
		MaxConnsPerHost:          2 * hotConns,
		ReadTimeout:              10 * time.Second,
		WriteTimeout:             10 * time.Second,
		NoDefaultUserAgentHeader: true,
	}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, warmup+dur+10*time.Second)
	defer cancel()

	measureFrom := time.Now().Add(warmup)
	measureTo := measureFrom.Add(dur)
	var errs atomic.Int64
	var firstErr atomic.Value
	samples := make([][]time.Duration, hotConns)
	var wg sync.WaitGroup
	for w := range hotConns {
		wg.Go(func() {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI(url)
			req.Header.Set("Accept", testenv.ManifestAccept)
			lat := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t := time.Now()
				if !t.Before(measureTo) {
					break
				}
				err := c.DoTimeout(req, resp, 10*time.Second)
				if err == nil && (resp.StatusCode() != http.StatusOK || int64(len(resp.Body())) != size) {
					err = fmt.Errorf("GET %s: status %d, %d bytes, want 200 and %d", url, resp.StatusCode(), len(resp.Body()), size)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
					time.Sleep(10 * time.Millisecond) // keep a broken server from spinning us
					continue
				}
				if end := time.Now(); !t.Before(measureFrom) && !end.After(measureTo) && len(lat) < maxSamples {
					lat = append(lat, end.Sub(t))
				}
			}
			samples[w] = lat
		})
	}
	wg.Wait()
	all := slices.Concat(samples...)
	slices.Sort(all)
	res := rate{reqs: int64(len(all)), elapsed: dur, errs: errs.Load()}
	if len(all) > 0 {
		res.p50 = all[len(all)*50/100]
		res.p99 = all[len(all)*99/100]
	}
	if e, _ := firstErr.Load().(error); e != nil {
		return res, fmt.Errorf("%d errors, first: %w", res.errs, e)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

// sleepCtx sleeps for d or until ctx ends; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
