package bench

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"
)

// uplinkBytesPerSec is the simulated site uplink: 200 Mbit/s, shared by all
// connections, as a real WAN link would be.
const uplinkBytesPerSec = 25e6

// measureUplink pulls an image that no column has seen through a throttled
// link to the upstream: the edge case the cache is for. On loopback the
// cold-pull row measures the cache's own CPU cost against a free upstream;
// here the link is the bottleneck, and a cache that streams while it
// downloads should cost nothing over pulling directly.
func measureUplink(ctx context.Context, b *testing.B, res *results, c *corpus, dir, upstreamURL string, placeholder bool) {
	link := startThrottle(b, upstreamURL, uplinkBytesPerSec)
	servers := map[string]string{colDirect: link}
	if placeholder {
		servers[colOutpost] = startDistributionProxy(b, "placeholder-uplink", dir, link).URL("")
	} else {
		servers[colOutpost] = startOutpost(b, "outpost-uplink", dir, link).URL("")
	}
	servers[colPeer] = startDistributionProxy(b, "peer-uplink", dir, link).URL("")
	cold := map[string]float64{}
	for _, col := range []string{colDirect, colOutpost, colPeer} {
		d, err := pull(ctx, servers[col], []image{c.uplink})
		if err != nil {
			b.Fatalf("cold pull over the uplink, %s: %v", col, err)
		}
		cold[col] = d.Seconds()
		res.logf("%-32s %8.3f s", "cold pull over uplink "+col, d.Seconds())
	}
	res.add("Cold pull over a 200 Mbit/s uplink (s)", "%.3f", "≤ 1.1x direct", cold, ratioAtMost(colDirect, 1.1))
	b.ReportMetric(cold[colOutpost], "uplink-cold-pull-s")
}

// startThrottle serves a reverse proxy to target whose response bodies
// share one paced link of bytesPerSec.
func startThrottle(tb testing.TB, target string, bytesPerSec float64) string {
	p := &pacer{rate: bytesPerSec}
	return serveProxy(tb, target, func(resp *http.Response) {
		resp.Body = &pacedBody{ReadCloser: resp.Body, p: p}
	})
}

// serveProxy serves a reverse proxy to target on loopback, with modify
// applied to every response, until the test ends; it returns its URL.
func serveProxy(tb testing.TB, target string, modify func(*http.Response)) string {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		modify(resp)
		return nil
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// pacer hands out the link's time slots in order.
type pacer struct {
	mu   sync.Mutex
	next time.Time
	rate float64 // bytes per second
}

func (p *pacer) wait(n int) {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	until := p.next
	p.mu.Unlock()
	time.Sleep(time.Until(until))
}

type pacedBody struct {
	io.ReadCloser
	p *pacer
}

func (b *pacedBody) Read(buf []byte) (int, error) {
	if len(buf) > 32<<10 { // small slices keep the pacing smooth
		buf = buf[:32<<10]
	}
	n, err := b.ReadCloser.Read(buf)
	b.p.wait(n)
	return n, err
}
