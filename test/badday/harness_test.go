package badday

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/outpost-oci/outpost/test/testenv"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// registry is go-containerregistry's registry on loopback, behind a
// switchable fault and a counter of concurrent blob downloads.
type registry struct {
	srv      *httptest.Server
	reg      http.Handler
	fault    atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
	inFlight atomic.Int32 // blob GETs being answered
	maxSeen  atomic.Int32 // the most at once
}

func startRegistry(t *testing.T) *registry {
	t.Helper()
	reg := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	r := &registry{reg: reg}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			n := r.inFlight.Add(1)
			defer r.inFlight.Add(-1)
			for m := r.maxSeen.Load(); n > m && !r.maxSeen.CompareAndSwap(m, n); m = r.maxSeen.Load() {
			}
		}
		if f := r.fault.Load(); f != nil && (*f)(w, req) {
			return
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// handler is the registry itself, for faults that answer through it.
func (r *registry) handler() http.Handler { return r.reg }

func (r *registry) addr() string { return strings.TrimPrefix(r.srv.URL, "http://") }

func (r *registry) setFault(f func(http.ResponseWriter, *http.Request) bool) {
	if f == nil {
		r.fault.Store(nil)
		return
	}
	r.fault.Store(&f)
}

// push writes img as repo:tag to the registry at addr.
func push(t *testing.T, addr, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(addr+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

func image(t *testing.T, size int64, layers int) v1.Image {
	return testenv.RandomImage(t, size, layers)
}

// pull fetches a manifest by ref through base and every blob it names,
// checking each digest; it returns the first failure's status and body.
func pull(base, repo, ref string) error {
	resp, body, err := testenv.Fetch("GET", base+"/v2/"+repo+"/manifests/"+ref, map[string]string{"Accept": testenv.ManifestAccept})
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return &pullError{resp.StatusCode, body}
	}
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return err
	}
	for _, desc := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		resp, b, err := testenv.Fetch("GET", base+"/v2/"+repo+"/blobs/"+desc.Digest.String(), nil)
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return &pullError{resp.StatusCode, b}
		}
		if got, _, _ := v1.SHA256(bytes.NewReader(b)); got != desc.Digest {
			return fmt.Errorf("blob %s came back as %s", desc.Digest, got)
		}
	}
	return nil
}

type pullError struct {
	status int
	body   []byte
}

func (e *pullError) Error() string {
	return fmt.Sprintf("status %d: %.300s", e.status, e.body)
}

// metric reads a metric from Outpost's admin listener: the sum of the
// samples whose labels include want.
func metric(t *testing.T, admin, metricName string, want map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	f := families[metricName]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

// rss returns a process's resident set size and its peak, in bytes.
func rss(t *testing.T, pid int) (now, peak int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kib, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			now = kib << 10
		case "VmHWM:":
			peak = kib << 10
		}
	}
	return now, peak
}

// latencyProxy forwards TCP connections to target, delaying every chunk
// by a fixed one-way latency in each direction (bandwidth is not limited):
// a satellite or a congested cellular link.
type latencyProxy struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	wg     sync.WaitGroup
}

func startLatencyProxy(t *testing.T, target string, oneWay time.Duration) *latencyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &latencyProxy{ln: ln, target: target, oneWay: oneWay}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *latencyProxy) addr() string { return p.ln.Addr().String() }

func (p *latencyProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			time.Sleep(2 * p.oneWay) // the TCP handshake's round trip
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { delayCopy(u, c, p.oneWay); done <- struct{}{} }()
			go func() { delayCopy(c, u, p.oneWay); done <- struct{}{} }()
			<-done
		}()
	}
}

// delayCopy copies src to dst, each chunk written oneWay after it was read.
func delayCopy(dst, src net.Conn, oneWay time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	chunks := make(chan chunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{buf[:n], time.Now().Add(oneWay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	dst.Close()
}
