package cache

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// ConnLimits bound what clients can hold: connections in all and per IP
// address, and how long a client may take to read what it asked for.
type ConnLimits struct {
	Max   int // open client connections in all; default 1024
	PerIP int // open connections from one IP address; default 128
	// WriteTimeout drops a client that accepts no bytes for this long. It
	// applies to each write, never to a whole response, so long blob
	// downloads are not cut; default 60s.
	WriteTimeout time.Duration
	ReadTimeout  time.Duration // reading one request; default 30s
	IdleTimeout  time.Duration // an idle keep-alive connection; default 120s
}

func (l *ConnLimits) setDefaults() {
	if l.Max <= 0 {
		l.Max = 1024
	}
	if l.PerIP <= 0 {
		l.PerIP = 128
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = 60 * time.Second
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = 30 * time.Second
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = 120 * time.Second
	}
}

// server returns the fasthttp server for the cache, tuned for long blob
// downloads on small machines. Connection limits and write timeouts are
// the listener's (see limitListener), because fasthttp's own per-IP limit
// wraps connections in a type that loses sendfile, and its WriteTimeout is
// one deadline for a whole response.
func (c *Cache) server() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:                       c.handler,
		Name:                          "outpost",
		ReadTimeout:                   c.conns.ReadTimeout,
		IdleTimeout:                   c.conns.IdleTimeout,
		MaxRequestBodySize:            4 << 10, // this API takes no bodies
		ReadBufferSize:                8 << 10, // the longest request line and headers accepted
		ReduceMemoryUsage:             true,
		NoDefaultContentType:          true,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Concurrency:                   c.conns.Max + 16, // the listener refuses first
		Logger:                        connLogger{c.log},
	}
}

// Serve serves on ln until ctx ends, then shuts down gracefully.
func (c *Cache) Serve(ctx context.Context, ln net.Listener) error {
	srv := c.server()
	lim := newLimitListener(ln, c.conns, c.metrics, c.log)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lim) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return c.shutdown(srv)
	}
}

// Grace periods of a shutdown: for responses in flight, then for the
// connections cut by stopping the downloads they stream from.
const (
	shutdownGrace = 10 * time.Second
	shutdownCut   = 2 * time.Second
)

// shutdown stops accepting and lets responses in flight finish. Those still
// streaming a download after the grace period are cut cleanly by stopping
// the downloads (whose partial data is discarded); that is the expected end
// of a stop, not an error.
func (c *Cache) shutdown(srv *fasthttp.Server) error {
	grace, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.ShutdownWithContext(grace); err == nil {
		return nil
	}
	c.log.Warn("responses still in flight after the grace period; stopping their downloads", "grace", shutdownGrace)
	c.Close()
	cut, cancelCut := context.WithTimeout(context.Background(), shutdownCut)
	defer cancelCut()
	if err := srv.ShutdownWithContext(cut); err != nil {
		c.log.Warn("connections left open at shutdown", "err", err)
	}
	return nil
}

// connLogger keeps fasthttp's connection-level errors (a TLS hello sent to
// this plain-HTTP port, a client vanishing) out of the way, and short.
type connLogger struct{ log *slog.Logger }

func (l connLogger) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	l.log.Debug("connection", "detail", msg)
}
