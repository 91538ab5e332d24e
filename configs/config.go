// Package configs holds Outpost's configuration: the types, the embedded
// default, strict YAML loading (Load, Parse) and validation (Validate).
package configs

import (
	_ "embed"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	HTTP      HTTP       `yaml:"http"`
	Admin     Admin      `yaml:"admin"`
	Storage   Storage    `yaml:"storage"`
	Log       Log        `yaml:"log"`
	Fills     Fills      `yaml:"fills"`
	Upstreams []Upstream `yaml:"upstreams"`
	Mirrors   []Mirror   `yaml:"mirrors"`
}

// HTTP configures the listener clients talk to.
type HTTP struct {
	Address             string   `yaml:"address"`             // client listener, default ":5000"
	MaxConnections      int      `yaml:"maxConnections"`      // open client connections in all, default 1024
	MaxConnectionsPerIP int      `yaml:"maxConnectionsPerIP"` // from one address, default 128
	WriteTimeout        Duration `yaml:"writeTimeout"`        // a client that reads nothing this long is dropped, default 60s
	ReadTimeout         Duration `yaml:"readTimeout"`         // reading one request, default 30s
	IdleTimeout         Duration `yaml:"idleTimeout"`         // an idle keep-alive connection, default 2m
}

// Fills bound the downloads from upstreams.
type Fills struct {
	Max          int      `yaml:"max"`          // concurrent downloads in all, default 16
	PerUpstream  int      `yaml:"perUpstream"`  // per upstream unless it sets maxFills, default 8
	Queue        Duration `yaml:"queue"`        // how long a request waits for a free slot before 429, default 10s
	AbandonAfter Duration `yaml:"abandonAfter"` // a download nobody waits for is cancelled after this, unless nearly done; default 5s
	MaxBlobSize  Size     `yaml:"maxBlobSize"`  // larger blobs are refused, default 16GiB; 0: no limit
	Timeout      Duration `yaml:"timeout"`      // one blob download from start to end, default 1h
}

// Admin configures the operator listener: /metrics, /healthz, /readyz.
type Admin struct {
	Address string `yaml:"address"` // e.g. "127.0.0.1:9500" (keep it on loopback); empty (the default) disables it
}

// Storage configures where cached content lives.
type Storage struct {
	Root    string `yaml:"root"`    // default "./outpost-data"
	Reserve Size   `yaml:"reserve"` // free disk space kept for metadata: no new content below it; default 64MiB
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug|info|warn|error, default info
	Format string `yaml:"format"` // auto|text|json, default auto (text on a terminal, json otherwise)
}

// Upstream is one registry Outpost pulls through to.
type Upstream struct {
	Name              string   `yaml:"name"`              // registry host clients think they talk to, e.g. docker.io, ghcr.io, registry.local:5001
	URLs              []string `yaml:"urls"`              // tried in order (failover); scheme://host[:port], no trailing slash after Parse
	Default           bool     `yaml:"default"`           // serves names without a registry host; at most one upstream
	TagTTL            Duration `yaml:"tagTTL"`            // default 5m; 0 means always revalidate
	RevalidateTimeout Duration `yaml:"revalidateTimeout"` // how long a stale tag waits for upstream before the cached one is served, default 2s, must be >0
	RequestTimeout    Duration `yaml:"requestTimeout"`    // one upstream request until its answer, default 20s
	ProbeTimeout      Duration `yaml:"probeTimeout"`      // one health probe, default 15s
	ProbeInterval     Duration `yaml:"probeInterval"`     // how often an unhealthy upstream or URL is probed, default 5s
	DownAfter         int      `yaml:"downAfter"`         // connection failures within downWindow that mark it down, default 3
	DownWindow        Duration `yaml:"downWindow"`        // default 1m
	Failback          Duration `yaml:"failback"`          // how long a failed URL is passed over, default 1m
	MaxFills          int      `yaml:"maxFills"`          // concurrent downloads from this upstream, default fills.perUpstream
	Insecure          bool     `yaml:"insecure"`          // plain HTTP / unverified TLS; an http:// URL requires insecure: true
	CAFile            string   `yaml:"caFile"`            // extra PEM CA bundle for this upstream
	Username          string   `yaml:"username"`          // basic/bearer credentials
	PasswordFile      string   `yaml:"passwordFile"`      // read at load; trailing newline trimmed; required when username set
	DockerConfig      string   `yaml:"dockerConfig"`      // Docker config.json whose credentials for this upstream are used
	// Password is filled from PasswordFile by Parse. Format, String,
	// GoString and LogValue redact it, so printing an Upstream or a Config
	// with any fmt verb or slog never shows it.
	Password string `yaml:"-" json:"-"`
}

// Defaults applied by Parse to fields the file leaves out.
const (
	DefaultAddress           = ":5000"
	DefaultStorageRoot       = "./outpost-data"
	DefaultLogLevel          = "info"
	DefaultLogFormat         = "auto"
	DefaultTagTTL            = Duration(5 * time.Minute)
	DefaultRevalidateTimeout = Duration(2 * time.Second)
	DefaultMaxBlobSize       = Size(16 << 30)
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default configuration file.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Default returns the parsed embedded default configuration. It panics only
// if the embedded file is broken, which a test rules out.
func Default() *Config {
	c, err := Parse("default.yaml (embedded)", defaultYAML)
	if err != nil {
		panic(err)
	}
	return c
}

// Duration is a time.Duration written as "5m", "2s" or "1h30m" in YAML.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String prints d the way a human writes it: 5m rather than 5m0s.
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// MarshalText makes YAML and JSON output read "5m".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses "5m", "2s", "1h30m" or "0".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration like 5m, 30s or 1h30m", b)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalYAML reports a bad duration the way yaml.v3 reports its own
// type errors (see unmarshalScalar).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "configs.Duration", d.UnmarshalText)
}

// unmarshalScalar decodes a scalar with parse and reports a bad value as a
// yaml TypeError worded like yaml.v3's own, so that the decoder keeps going
// and Parse can list (and reword) every mistake at once.
func unmarshalScalar(n *yaml.Node, goType string, parse func([]byte) error) error {
	if n.Kind != yaml.ScalarNode || parse([]byte(n.Value)) != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf(
			"line %d: cannot unmarshal %s `%s` into %s", n.Line, n.ShortTag(), n.Value, goType)}}
	}
	return nil
}

// Size is a number of bytes written as "64MiB", "16GiB", "500MB" or a plain
// number in YAML.
type Size int64

// String prints s in binary units where it divides evenly.
func (s Size) String() string {
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.n == 0 {
			return strconv.FormatInt(int64(s)/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// MarshalText makes YAML and JSON output read "64MiB".
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses "64MiB", "1.5GB", "4096".
func (s *Size) UnmarshalText(b []byte) error {
	n, err := humanize.ParseBytes(string(b))
	if err != nil || n > math.MaxInt64 {
		return fmt.Errorf("%q is not a size like 64MiB, 16GiB or 500MB", b)
	}
	*s = Size(n)
	return nil
}

// UnmarshalYAML reports a bad size like yaml.v3's own type errors.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "configs.Size", s.UnmarshalText)
}

// redactedUpstream has Upstream's fields but none of its methods, so
// formatting it does not recurse into Upstream.Format.
type redactedUpstream Upstream

func (u Upstream) redacted() redactedUpstream {
	r := redactedUpstream(u)
	if r.Password != "" {
		r.Password = "[redacted]"
	}
	return r
}

// Format makes every fmt verb (%v, %+v, %#v, %s, %d, ...) print u with the
// password redacted.
func (u Upstream) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, u.GoString())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), u.redacted())
}

// String returns u with the password redacted.
func (u Upstream) String() string { return fmt.Sprintf("%+v", u.redacted()) }

// GoString returns u with the password redacted.
func (u Upstream) GoString() string {
	return "configs.Upstream" + strings.TrimPrefix(fmt.Sprintf("%#v", u.redacted()), "configs.redactedUpstream")
}

// LogValue lets slog print an upstream without its password.
func (u Upstream) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", u.Name),
		slog.Any("urls", u.URLs),
		slog.Bool("default", u.Default),
		slog.String("tagTTL", u.TagTTL.String()),
		slog.String("revalidateTimeout", u.RevalidateTimeout.String()),
		slog.Bool("insecure", u.Insecure),
		slog.String("caFile", u.CAFile),
		slog.String("username", u.Username),
		slog.Bool("hasPassword", u.Password != ""),
		slog.String("dockerConfig", u.DockerConfig),
	)
}
