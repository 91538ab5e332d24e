package cache

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"
)

// limitListener enforces ConnLimits on accepted connections: too many in
// all or from one address are answered with a short OCI error and closed;
// the others get a write deadline renewed on every write (see conn).
type limitListener struct {
	net.Listener
	limits  ConnLimits
	metrics *metrics
	log     *slog.Logger

	mu       sync.Mutex
	total    int
	perIP    map[netip.Addr]int
	refusing chan struct{} // refusals being answered, bounded
}

// maxRefusing bounds the connections being answered a refusal at once.
const maxRefusing = 64

func newLimitListener(ln net.Listener, limits ConnLimits, m *metrics, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, limits: limits, metrics: m, log: log, perIP: map[netip.Addr]int{},
		refusing: make(chan struct{}, maxRefusing)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	backoff := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			// Out of descriptors or buffers, for a moment: wait, as net/http
			// does, instead of taking the whole server down.
			l.log.Warn("accepting a connection failed; retrying", "err", err, "in", backoff.String())
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		ip := remoteIP(c)
		if reason := l.admit(ip); reason != "" {
			l.metrics.connsRefused.WithLabelValues(reason).Inc()
			select {
			case l.refusing <- struct{}{}:
				go func() { refuse(c, reason); <-l.refusing }()
			default:
				c.Close() // too many being refused already: just close
			}
			continue
		}
		l.metrics.conns.Inc()
		return &conn{Conn: c, l: l, ip: ip, timeout: l.limits.WriteTimeout}, nil
	}
}

func (l *limitListener) admit(ip netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.limits.Max:
		return "total"
	case l.perIP[ip] >= l.limits.PerIP:
		return "per_ip"
	}
	l.total++
	l.perIP[ip]++
	return ""
}

func (l *limitListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
	l.metrics.conns.Dec()
}

// remoteIP is the client address a per-IP limit counts against: the IPv4
// address, or the IPv6 /64 (one site's prefix: a client has as many
// addresses in it as it likes).
func remoteIP(c net.Conn) netip.Addr {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// refuse answers a connection over the limits with 429 (or 503 when the
// whole box is full) and closes it, without waiting on a slow client.
func refuse(c net.Conn, reason string) {
	defer c.Close()
	status, code, msg := "429 Too Many Requests", "TOOMANYREQUESTS", "too many connections from your address"
	if reason == "total" {
		status, code, msg = "503 Service Unavailable", "UNAVAILABLE", "this Outpost has too many connections"
	}
	body := `{"errors":[{"code":"` + code + `","message":"` + msg + `; try again shortly"}]}`
	c.SetDeadline(time.Now().Add(time.Second))
	io.WriteString(c, "HTTP/1.1 "+status+"\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"+
		"Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	// Closing with the request unread would reset the connection and
	// destroy the answer before the client read it: end our side, then
	// read what the client sent until it closes (or the second is up).
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// conn renews its write deadline before every write of at most
// writeChunk bytes, so a client that stops reading is dropped after the
// timeout while a slow one that keeps reading is not. It keeps the TCP
// connection's ReadFrom, so files still go out with sendfile.
type conn struct {
	net.Conn
	l        *limitListener
	ip       netip.Addr
	timeout  time.Duration
	deadline time.Time // the write deadline last set
	once     sync.Once
}

// renew pushes the write deadline to timeout from now, unless it was set
// so recently that it is still most of the way off (a deadline costs a
// timer update; manifests are tens of thousands of writes a second).
func (c *conn) renew() error {
	now := time.Now()
	if c.deadline.Sub(now) > c.timeout-c.timeout/8 {
		return nil
	}
	c.deadline = now.Add(c.timeout)
	return c.SetWriteDeadline(c.deadline)
}

const (
	writeChunk    = 256 << 10
	sendfileChunk = 1 << 20
)

func (c *conn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeChunk)
		if err := c.renew(); err != nil {
			return n, err
		}
		m, err := c.Conn.Write(p[:k])
		n += m
		p = p[m:]
		if err != nil && !slowNotStalled(int64(m), err) {
			return n, err
		}
		if err != nil {
			c.deadline = time.Time{}
		}
	}
	return n, nil
}

// ReadFrom sends a file (or a limited stretch of one) with sendfile, a
// chunk at a time, each under a fresh write deadline.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := c.Conn.(io.ReaderFrom)
	lr, limited := r.(*io.LimitedReader)
	var f *os.File
	if limited {
		f, _ = lr.R.(*os.File)
	} else {
		f, _ = r.(*os.File)
	}
	if !ok || f == nil {
		return io.Copy(writerOnly{c}, r)
	}
	var sent int64
	for {
		n := int64(sendfileChunk)
		if limited {
			if lr.N <= 0 {
				return sent, nil
			}
			n = min(n, lr.N)
		}
		if err := c.renew(); err != nil {
			return sent, err
		}
		m, err := rf.ReadFrom(&io.LimitedReader{R: f, N: n})
		sent += m
		if limited {
			lr.N -= m
		}
		switch {
		case err != nil && slowNotStalled(m, err):
			c.deadline = time.Time{}
			continue
		case err != nil:
			return sent, err
		case m < n: // the end of the file
			return sent, nil
		}
	}
}

// minProgress is what a client must have taken when a write deadline
// passes to count as slow rather than stalled: it then gets a fresh
// deadline and the response goes on.
const minProgress = 16 << 10

func slowNotStalled(sent int64, err error) bool {
	return sent >= minProgress && errors.Is(err, os.ErrDeadlineExceeded)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// writerOnly hides ReadFrom, so that io.Copy does not call back into it.
type writerOnly struct{ io.Writer }
