package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Server is a started process that serves the registry API on Addr.
type Server struct {
	*Proc
	Addr  string // 127.0.0.1:PORT
	Data  string // storage root
	Admin string // the admin listener (/metrics), if configured
}

// URL returns http://Addr followed by path ("" or "/v2/...").
func (s *Server) URL(path string) string { return "http://" + s.Addr + path }

// RegistryOptions tune StartRegistry.
type RegistryOptions struct {
	RemoteURL string // if set, run as a pull-through proxy of this URL
	AccessLog bool   // log every request to the process log
}

// StartRegistry runs the CNCF distribution registry (v3) with everything
// under dir (storage in dir/data) and waits until it answers /v2/.
func StartRegistry(tb testing.TB, dir string, opt RegistryOptions) *Server {
	tb.Helper()
	bin := RequireRegistry(tb)
	addr := FreeAddr(tb)
	// Upload purging is off so that no background work disturbs timings.
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: %t
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: outpost-testenv
`, !opt.AccessLog, filepath.Join(dir, "data"), addr)
	if opt.RemoteURL != "" {
		cfg += "proxy:\n  remoteurl: " + opt.RemoteURL + "\n"
	}
	cfgPath := filepath.Join(dir, "config.yml")
	WriteFile(tb, cfgPath, cfg)
	p := Start(tb, "registry "+filepath.Base(dir), filepath.Join(dir, "registry.log"), Env(), bin, "serve", cfgPath)
	p.WaitV2(tb, addr)
	return &Server{Proc: p, Addr: addr, Data: filepath.Join(dir, "data")}
}

// Upstream is one entry of outpost's `upstreams:` list.
type Upstream struct {
	Name              string
	URL               string
	URLs              []string // several URLs, tried in order (instead of URL)
	Default           bool
	TagTTL            string // empty: product default
	RevalidateTimeout string // empty: product default
	RequestTimeout    string // empty: product default
	Extra             string // more keys of the entry, one per line ("probeTimeout: 2s")
}

// OutpostConfig renders outpost's YAML configuration.
type OutpostConfig struct {
	Addr      string // empty: StartOutpost picks a free port
	Admin     bool   // serve /metrics on a free port (Server.Admin)
	Root      string // storage root; empty: StartOutpost uses dir/data
	Reserve   string // storage.reserve; empty: product default
	HTTP      string // more keys of the http section, one per line ("writeTimeout: 5s")
	Level     string // log level; empty: warn
	Extra     string // more top-level sections, as YAML ("fills:\n  max: 2\n")
	Upstreams []Upstream

	adminAddr string // set by StartOutpost when Admin is true
}

// YAML is the configuration file's content.
func (c OutpostConfig) YAML() string {
	level := c.Level
	if level == "" {
		level = "warn"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "http:\n  address: %s\n", c.Addr)
	for _, line := range strings.Split(strings.TrimSpace(c.HTTP), "\n") {
		if line != "" {
			fmt.Fprintf(&b, "  %s\n", strings.TrimSpace(line))
		}
	}
	fmt.Fprintf(&b, "storage:\n  root: %s\n", c.Root)
	if c.Reserve != "" {
		fmt.Fprintf(&b, "  reserve: %s\n", c.Reserve)
	}
	if c.adminAddr != "" {
		fmt.Fprintf(&b, "admin:\n  address: %s\n", c.adminAddr)
	}
	fmt.Fprintf(&b, "log:\n  level: %s\n%s", level, c.Extra)
	b.WriteString("upstreams:\n")
	for _, u := range c.Upstreams {
		urls := u.URLs
		if len(urls) == 0 {
			urls = []string{u.URL}
		}
		quoted := make([]string, len(urls))
		for i, url := range urls {
			quoted[i] = fmt.Sprintf("%q", url)
		}
		fmt.Fprintf(&b, "  - name: %s\n    urls: [%s]\n    insecure: true\n", u.Name, strings.Join(quoted, ", "))
		for _, line := range strings.Split(strings.TrimSpace(u.Extra), "\n") {
			if line != "" {
				fmt.Fprintf(&b, "    %s\n", strings.TrimSpace(line))
			}
		}
		if u.Default {
			b.WriteString("    default: true\n")
		}
		if u.TagTTL != "" {
			fmt.Fprintf(&b, "    tagTTL: %s\n", u.TagTTL)
		}
		if u.RevalidateTimeout != "" {
			fmt.Fprintf(&b, "    revalidateTimeout: %s\n", u.RevalidateTimeout)
		}
		if u.RequestTimeout != "" {
			fmt.Fprintf(&b, "    requestTimeout: %s\n", u.RequestTimeout)
		}
	}
	return b.String()
}

// StartOutpost writes cfg to dir/outpost.yaml and runs `outpost serve`
// (built by Outpost) until it answers /v2/.
func StartOutpost(tb testing.TB, dir string, cfg OutpostConfig) *Server {
	tb.Helper()
	bin := Outpost(tb)
	if cfg.Addr == "" {
		cfg.Addr = FreeAddr(tb)
	}
	if cfg.Admin && cfg.adminAddr == "" {
		cfg.adminAddr = FreeAddr(tb)
	}
	if cfg.Root == "" {
		cfg.Root = filepath.Join(dir, "data")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "outpost.yaml")
	WriteFile(tb, cfgPath, cfg.YAML())
	p := Start(tb, "outpost", filepath.Join(dir, "outpost.log"), Env(), bin, "serve", "--config", cfgPath)
	p.WaitV2(tb, cfg.Addr)
	return &Server{Proc: p, Addr: cfg.Addr, Data: cfg.Root, Admin: cfg.adminAddr}
}
