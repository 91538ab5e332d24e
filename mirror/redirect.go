package mirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// Redirect policy. Registries redirect blob downloads to storage (S3,
// a CDN) with presigned URLs; that is followed, but only:
//   - for a few hops (Options.MaxRedirects),
//   - never from https to http,
//   - never to a loopback, link-local, private or otherwise non-public
//     address, unless the host is one of the upstream's own URLs (checked
//     when the redirect is seen and again when the connection is made, so
//     DNS cannot swap the address in between),
//   - with credentials only to the scheme, host and port of the URL that
//     asked.
//
// Query strings of redirect targets (the presigned part) never reach a log:
// errors carry URLs without them.

// errRedirect is the cause of a redirect that the policy refuses.
var errRedirect = errors.New("redirect refused")

func (u *Upstream) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > u.opts.MaxRedirects {
		return fmt.Errorf("%w: more than %d redirects", errRedirect, u.opts.MaxRedirects)
	}
	prev := via[len(via)-1].URL
	switch {
	case req.URL.Scheme != "https" && req.URL.Scheme != "http":
		return fmt.Errorf("%w: to scheme %q", errRedirect, req.URL.Scheme)
	case prev.Scheme == "https" && req.URL.Scheme == "http":
		return fmt.Errorf("%w: from https to http (%s)", errRedirect, redactURL(req.URL))
	}
	host := req.URL.Hostname()
	if u.ownHosts[host] {
		return nil
	}
	if _, err := publicAddrs(req.Context(), host); err != nil {
		return err
	}
	return nil
}

// publicAddrs resolves host and refuses it unless every address is public.
func publicAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
	}
	for _, a := range addrs {
		if !isPublic(a) {
			return nil, fmt.Errorf("%w: %s is a %s address", errRedirect, host, addrClass(a))
		}
	}
	return addrs, nil
}

// cgnat is the shared address space of carrier-grade NAT (RFC 6598), as
// unreachable from the internet as private addresses.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func isPublic(a netip.Addr) bool { return addrClass(a) == "" }

func addrClass(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "link-local"
	case a.IsPrivate(), cgnat.Contains(a):
		return "private"
	case a.IsUnspecified(), a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return "non-unicast"
	}
	return ""
}

// publicOnlyKey marks a request context whose connections may only go to
// public addresses: a redirect hop to a host that is not the upstream's own.
type publicOnlyKey struct{}

// guardDial wraps a dialer: a connection for a redirect hop to a foreign
// host is made only to a public address, the one that was checked.
func guardDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if ctx.Value(publicOnlyKey{}) == nil {
			return dial(ctx, network, addr)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		addrs, err := publicAddrs(ctx, host)
		if err != nil {
			return nil, err
		}
		var last error
		for _, a := range addrs {
			c, err := dial(ctx, network, net.JoinHostPort(a.String(), port))
			if err == nil {
				return c, nil
			}
			last = err
		}
		return nil, last
	}
}

// redirectGuard sits below go-containerregistry's auth transport. On a
// redirect hop it removes credentials unless the hop goes to the origin
// (same scheme, host and port) and restricts foreign hosts to public
// addresses.
type redirectGuard struct {
	origin   *url.URL
	ownHosts map[string]bool
	next     http.RoundTripper
}

func (g *redirectGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Response == nil { // not a redirect hop
		return g.next.RoundTrip(req)
	}
	sameOrigin := req.URL.Scheme == g.origin.Scheme && canonicalHostPort(req.URL) == canonicalHostPort(g.origin)
	foreign := !g.ownHosts[req.URL.Hostname()]
	if !sameOrigin || foreign {
		ctx := req.Context()
		if foreign {
			ctx = context.WithValue(ctx, publicOnlyKey{}, true)
		}
		req = req.Clone(ctx)
		if !sameOrigin {
			req.Header.Del("Authorization")
		}
	}
	return g.next.RoundTrip(req)
}

func canonicalHostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return strings.ToLower(u.Hostname()) + ":" + port
}

// redactURL drops the query (presigned signatures) and any user info.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	c.User = nil
	if c.RawQuery != "" {
		c.RawQuery = "[redacted]"
	}
	c.Fragment = ""
	return c.String()
}

func redactURLString(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		if i := strings.IndexByte(s, '?'); i >= 0 {
			return s[:i] + "?[redacted]"
		}
		return s
	}
	return redactURL(u)
}

// redactErr removes query strings from the URLs of a request error, at
// every level (retries and redirects nest them).
func redactErr(err error) error {
	for e := err; e != nil; {
		var ue *url.Error
		if !errors.As(e, &ue) {
			break
		}
		ue.URL = redactURLString(ue.URL)
		e = ue.Err
	}
	return err
}
