package badday

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/outpost-oci/outpost/test/testenv"
)

// stallers opens n connections that ask for path and never read, on
// sockets with a tiny receive buffer.
func stallers(t *testing.T, addr, path string, n int) []net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := d.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: outpost\r\nAccept: "+testenv.ManifestAccept+"\r\n\r\n")
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// Memory per connection is bounded: 300 clients that stop reading a
// 3.9 MiB manifest (or a 200 KiB one) cost Outpost little memory, because
// the manifest is sent from its file (or from one shared buffer), not
// copied per connection; they are dropped after the write timeout.
func TestStalledReadersOnLargeManifests(t *testing.T) {
	reg := startRegistry(t)
	padded := func(n int) v1.Image {
		return mutate.Annotations(image(t, 1024, 1), map[string]string{"pad": strings.Repeat("x", n)}).(v1.Image)
	}
	push(t, reg.addr(), "acme/big", "1", padded(3900<<10))
	push(t, reg.addr(), "acme/medium", "1", padded(200<<10))
	o := testenv.StartOutpost(t, filepath.Join(t.TempDir(), "outpost"), testenv.OutpostConfig{
		Admin: true, HTTP: "maxConnectionsPerIP: 400\nwriteTimeout: 6s",
		Upstreams: []testenv.Upstream{{Name: "docker.io", URL: reg.srv.URL, Default: true}},
	})
	for _, repo := range []string{"acme/big", "acme/medium"} {
		if resp, _, err := testenv.Fetch("GET", o.URL("/v2/"+repo+"/manifests/1"), map[string]string{"Accept": testenv.ManifestAccept}); err != nil || resp.StatusCode != 200 {
			t.Fatalf("warm %s: %v %v", repo, resp, err)
		}
	}
	testenv.Client.CloseIdleConnections()
	base, _ := rss(t, o.Pid())
	open := func() float64 { return metric(t, o.Admin, "outpost_http_connections", nil) }
	for _, repo := range []string{"acme/medium", "acme/big"} {
		conns := stallers(t, o.Addr, "/v2/"+repo+"/manifests/1", 300)
		time.Sleep(2 * time.Second)
		now, peak := rss(t, o.Pid())
		t.Logf("%s: RSS %d MiB with 300 stalled readers (%d MiB before, peak %d MiB)", repo, now>>20, base>>20, peak>>20)
		if now-base > 64<<20 || peak > 160<<20 {
			t.Errorf("%s: 300 stalled readers took RSS from %d MiB to %d MiB (peak %d MiB)", repo, base>>20, now>>20, peak>>20)
		}
		if repo == "acme/medium" {
			// 200 KiB may fit in the kernel's socket buffers: nothing stalls
			// in Outpost. Let them go.
			for _, c := range conns {
				c.Close()
			}
			testenv.WaitUntil(t, o.Proc, 10*time.Second, "the medium readers leave", func() error {
				if n := open(); n > 0 {
					return fmt.Errorf("%v connections open", n)
				}
				return nil
			})
		}
	}
	// 3.9 MiB does not fit: Outpost's writes stall, and the write timeout
	// (6s) drops every one of them.
	testenv.WaitUntil(t, o.Proc, 20*time.Second, "the stalled readers are dropped", func() error {
		if n := open(); n > 0 {
			return fmt.Errorf("%v connections still open", n)
		}
		return nil
	})
	if resp, _, err := testenv.Fetch("GET", o.URL("/v2/acme/big/manifests/1"), map[string]string{"Accept": testenv.ManifestAccept}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the stalled readers: %v %v", resp, err)
	}
}
