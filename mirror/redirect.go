package mirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
)

// Redirect policy. Registries redirect blob downloads to storage (S3,
// a CDN) with presigned URLs; that is followed, but only:
//   - for a few hops (Options.MaxRedirects),
//   - never from https to http,
//   - never to a loopback, link-local, private or otherwise non-public
//     address, unless the host is the one of the URL that was asked,
//   - with credentials only to the scheme, host and port of that URL, and
//     without following a foreign host's auth challenge.
//
// It is enforced twice: by the client that follows redirects (for clear
// errors), and below go-containerregistry's auth transport on every hop,
// including those of its own ping and token requests, which follow
// redirects with Go's default policy. Where no proxy is configured, the
// address is checked once more as the connection is made, so DNS cannot
// swap it in between.
//
// Query strings of redirect targets (the presigned part) never reach a log:
// errors carry URLs without them.

// errRedirect is the cause of a redirect that the policy refuses.
var errRedirect = errors.New("redirect refused")

func (u *Upstream) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > u.opts.MaxRedirects {
		return fmt.Errorf("%w: more than %d redirects", errRedirect, u.opts.MaxRedirects)
	}
	if err := schemeAllowed(via[len(via)-1].URL, req.URL); err != nil {
		return err
	}
	host := req.URL.Hostname()
	if strings.EqualFold(host, via[0].URL.Hostname()) {
		return nil
	}
	_, err := publicAddrs(req.Context(), host)
	return err
}

func schemeAllowed(from, to *url.URL) error {
	switch {
	case to.Scheme != "https" && to.Scheme != "http":
		return fmt.Errorf("%w: to scheme %q", errRedirect, to.Scheme)
	case from.Scheme == "https" && to.Scheme == "http":
		return fmt.Errorf("%w: from https to http (%s)", errRedirect, redactURL(to))
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

// Address ranges no redirect may lead to besides loopback, link-local and
// private ones (RFC 6890 and friends).
var nonPublic = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // this network
		"100.64.0.0/10",   // carrier-grade NAT
		"192.0.0.0/24",    // IETF protocol assignments
		"198.18.0.0/15",   // benchmarking
		"240.0.0.0/4",     // reserved, and the broadcast address
		"64:ff9b:1::/48",  // local-use NAT64
		"fec0::/10",       // site-local (deprecated)
		"100::/64",        // discard-only
		"2001:db8::/32",   // documentation
		"192.0.2.0/24",    // documentation
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

var (
	nat64  = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4 = netip.MustParsePrefix("2002::/16")
)

func isPublic(a netip.Addr) bool { return addrClass(a) == "" }

func addrClass(a netip.Addr) string {
	a = a.Unmap()
	// IPv6 forms that carry an IPv4 address are as public as that address.
	if b := a.As16(); nat64.Contains(a) {
		return addrClass(netip.AddrFrom4([4]byte(b[12:16])))
	} else if sixTo4.Contains(a) {
		return addrClass(netip.AddrFrom4([4]byte(b[2:6])))
	}
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "link-local"
	case a.IsPrivate():
		return "private"
	case a.IsUnspecified(), a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return "non-unicast"
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return "reserved"
		}
	}
	return ""
}

// publicOnlyKey marks a request context whose connections may only go to
// public addresses: a redirect hop to a host that is not the upstream's own.
type publicOnlyKey struct{}

// proxyConfigured reports whether the environment routes upstream traffic
// through a proxy; then connections go to the proxy, whose address says
// nothing about the target's, and only the resolution check applies.
func proxyConfigured() bool {
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"} {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}

// refuseNonPublic is a dialer's ControlContext: it sees the address the
// connection really goes to, after resolution, and refuses a non-public
// one for a redirect hop to a foreign host.
func refuseNonPublic(ctx context.Context, _, address string, _ syscall.RawConn) error {
	if ctx.Value(publicOnlyKey{}) == nil {
		return nil
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if a, err := netip.ParseAddr(host); err == nil && !isPublic(a) {
		return fmt.Errorf("%w: the connection would go to %s, a %s address", errRedirect, host, addrClass(a))
	}
	return nil
}

// redirectGuard sits below go-containerregistry's auth transport and sees
// every hop. On a redirect hop it enforces the hop limit and the scheme
// rule, removes credentials unless the hop goes to the origin (same
// scheme, host and port), restricts a foreign host to public addresses,
// and hides a foreign host's auth challenge so that no token is fetched
// from wherever it names.
type redirectGuard struct {
	origin       *url.URL
	maxRedirects int
	next         http.RoundTripper
}

func (g *redirectGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Response == nil { // not a redirect hop
		return g.next.RoundTrip(req)
	}
	hops := 0
	for r := req.Response; r != nil && r.Request != nil; r = r.Request.Response {
		hops++
	}
	if hops > g.maxRedirects {
		return nil, fmt.Errorf("%w: more than %d redirects", errRedirect, g.maxRedirects)
	}
	if req.Response.Request != nil {
		if err := schemeAllowed(req.Response.Request.URL, req.URL); err != nil {
			return nil, err
		}
	}
	sameOrigin := req.URL.Scheme == g.origin.Scheme && canonicalHostPort(req.URL) == canonicalHostPort(g.origin)
	foreign := !strings.EqualFold(req.URL.Hostname(), g.origin.Hostname())
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
	resp, err := g.next.RoundTrip(req)
	if err == nil && !sameOrigin && resp.StatusCode == http.StatusUnauthorized {
		resp.Header.Del("WWW-Authenticate")
	}
	return resp, err
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
