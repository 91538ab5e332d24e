package configs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const src = "/etc/outpost/config.yaml"

// issueExample is the form from the design issue; it must keep working.
const issueExample = `http:
  address: 127.0.0.1:5000
storage:
  root: /var/lib/outpost
upstreams:
  - name: docker.io              # the registry host that clients think they talk to
    urls: [https://registry-1.docker.io]   # several URLs: tried in order (failover)
    default: true                # serves names that carry no registry host
    tagTTL: 5m                   # how long a tag is served without asking upstream
  - name: registry.local:5001
    urls: [http://127.0.0.1:5001]
    insecure: true               # plain HTTP / unverified TLS, opt-in per upstream
    username: bot                # optional; password from passwordFile, never logged
    passwordFile: /etc/outpost/registry.local.pass
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test CA"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
}

func TestDefault(t *testing.T) {
	c := Default()
	if c.HTTP.Address != ":5000" || c.Storage.Root != "./outpost-data" || c.Log.Level != "info" || c.Log.Format != "auto" {
		t.Errorf("unexpected top-level defaults: %+v", c)
	}
	want := map[string]string{
		"docker.io":       "https://registry-1.docker.io",
		"ghcr.io":         "https://ghcr.io",
		"quay.io":         "https://quay.io",
		"registry.k8s.io": "https://registry.k8s.io",
		"gcr.io":          "https://gcr.io",
	}
	if len(c.Upstreams) != len(want) {
		t.Fatalf("got %d upstreams, want %d", len(c.Upstreams), len(want))
	}
	for _, u := range c.Upstreams {
		if len(u.URLs) != 1 || u.URLs[0] != want[u.Name] {
			t.Errorf("%s: urls %v, want [%s]", u.Name, u.URLs, want[u.Name])
		}
		if u.Default != (u.Name == "docker.io") {
			t.Errorf("%s: default = %v", u.Name, u.Default)
		}
		if u.TagTTL.D() != 5*time.Minute || u.RevalidateTimeout.D() != 2*time.Second {
			t.Errorf("%s: tagTTL %v revalidateTimeout %v", u.Name, u.TagTTL, u.RevalidateTimeout)
		}
	}
	if !bytes.Contains(DefaultYAML(), []byte("registry-1.docker.io")) {
		t.Error("DefaultYAML does not look like the default config")
	}
}

func TestIssueExampleIsMinimalYAML(t *testing.T) {
	b, err := os.ReadFile("examples/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != issueExample {
		t.Fatal("examples/minimal.yaml differs from the issue's example")
	}
}

func TestIssueExampleParses(t *testing.T) {
	pass := writeFile(t, "registry.local.pass", "s3cret\n")
	data := strings.Replace(issueExample, "/etc/outpost/registry.local.pass", pass, 1)
	c, err := Parse(src, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Address != "127.0.0.1:5000" || c.Storage.Root != "/var/lib/outpost" || c.Log.Level != "info" {
		t.Errorf("top level: %+v", c)
	}
	hub, local := c.Upstreams[0], c.Upstreams[1]
	if !hub.Default || hub.TagTTL.D() != 5*time.Minute || hub.URLs[0] != "https://registry-1.docker.io" {
		t.Errorf("docker.io: %+v", hub)
	}
	if local.Name != "registry.local:5001" || !local.Insecure || local.Username != "bot" || local.Password != "s3cret" {
		t.Errorf("registry.local: %+v", local)
	}
	if local.TagTTL != DefaultTagTTL || local.RevalidateTimeout != DefaultRevalidateTimeout {
		t.Errorf("registry.local durations not defaulted: %v %v", local.TagTTL, local.RevalidateTimeout)
	}
}

func TestSiteMirrorExample(t *testing.T) {
	b, err := os.ReadFile("examples/site-mirror.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data := strings.NewReplacer(
		"/etc/outpost/corp-ca.pem", testCA(t),
		"/etc/outpost/docker-config.json", writeFile(t, "config.json", `{"auths":{}}`),
	).Replace(string(b))
	c, err := Parse("site-mirror.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Upstreams[0].URLs) != 2 || c.Upstreams[0].CAFile == "" {
		t.Errorf("docker.io: %+v", c.Upstreams[0])
	}
}

func TestParseErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	notPEM := writeFile(t, "ca.pem", "not a certificate\n")
	pass := writeFile(t, "pass", "pw\n")
	emptyPass := writeFile(t, "empty", "\n")
	dockerCfg := writeFile(t, "config.json", `{"auths":{}}`)
	up := func(extra string) string { // one upstream with extra lines
		return "upstreams:\n  - name: ghcr.io\n    urls: [https://ghcr.io]\n" + extra
	}

	withURL := func(u string) string { return "upstreams:\n  - name: ghcr.io\n    urls: [" + u + "]\n" }

	tests := []struct {
		name string
		yaml string
		want []string // every one must appear in the error
	}{
		{"empty file", "", []string{"the file is empty"}},
		{"comments only", "# nothing\n", []string{"the file is empty"}},
		{"null document", "~\n", []string{"the file is empty"}},
		{"second document", "http: {address: ':1'}\n---\nhttp: {address: ':2'}\n", []string{"line 2: a second YAML document"}},
		{"syntax error", "http:\n  address: [\n", []string{src + ": line"}},
		{"not a mapping", "hello\n", []string{`line 1: top level: "hello" is not a mapping with keys like http, storage, log, upstreams`}},
		{"unknown key", up("    tagttl: 5m\n"), []string{`line 4: unknown field "tagttl" in upstreams[0] (did you mean "tagTTL"?)`}},
		{"unknown top key", "upstream: []\n", []string{`line 1: unknown field "upstream" in the top level (did you mean "upstreams"?)`}},
		{"unknown key no hint", "http:\n  port: 5000\n", []string{`line 2: unknown field "port" in http`}},
		{"bad duration", up("    tagTTL: five\n"), []string{`line 4: upstreams[0].tagTTL: "five" is not a duration like 5m`}},
		{"number duration", up("    revalidateTimeout: 300\n"), []string{`upstreams[0].revalidateTimeout: "300" is not a duration`}},
		{"bad bool", up("    insecure: maybe\n"), []string{`line 4: upstreams[0].insecure: "maybe" is not true or false`}},
		{"urls not a list", "upstreams:\n  - name: ghcr.io\n    urls: https://ghcr.io\n", []string{`line 3: upstreams[0].urls: "https:/" is not a list`}},
		{"upstreams not a list", "upstreams:\n  name: ghcr.io\n", []string{`line 2: upstreams: a mapping is not a list of upstreams`}},
		{"two defaults", "upstreams:\n  - {name: a.io, urls: [https://a.io], default: true}\n  - {name: b.io, urls: [https://b.io], default: true}\n",
			[]string{`line 3: upstreams[1].default: only one upstream can be the default, upstreams[0] (a.io) already is`}},
		{"http without insecure", "upstreams:\n  - name: r.local\n    urls: [http://x]\n", []string{`line 3: upstreams[0].urls[0]: "http://x" is plain HTTP; set insecure: true`}},
		{"ftp url", "upstreams:\n  - {name: a.io, urls: [https://a.io]}\n  - {name: b.io, urls: [ftp://x]}\n", []string{`upstreams[1].urls[0]: "ftp://x" must start with http:// or https://`}},
		{"url path", withURL("https://ghcr.io/v2"), []string{`upstreams[0].urls[0]: "https://ghcr.io/v2" must not have a path`}},
		{"url query", withURL(`"https://ghcr.io?x=1"`), []string{`must not have a query`}},
		{"url userinfo", withURL("https://u:p@ghcr.io"), []string{`must not contain credentials`}},
		{"url no host", withURL("https://"), []string{`upstreams[0].urls[0]: "https://" has no host`}},
		{"no urls", "upstreams:\n  - name: ghcr.io\n", []string{`upstreams[0].urls: needs at least one URL`}},
		{"bad name", "upstreams:\n  - {name: 'https://ghcr.io', urls: [https://ghcr.io]}\n", []string{`upstreams[0].name: "https://ghcr.io" is not a registry host`}},
		{"empty name", "upstreams:\n  - {urls: [https://ghcr.io]}\n", []string{`upstreams[0].name: "" is not a registry host`}},
		{"upper-case name", "upstreams:\n  - {name: GHCR.io, urls: [https://ghcr.io]}\n", []string{`upstreams[0].name: "GHCR.io" must be lower case`}},
		{"duplicate name", "upstreams:\n  - {name: a.io, urls: [https://a.io]}\n  - {name: a.io, urls: [https://b.io]}\n", []string{`upstreams[1].name: "a.io" is the same registry as upstreams[0]`}},
		{"docker hub alias", "upstreams:\n  - {name: docker.io, urls: [https://a.io]}\n  - {name: index.docker.io, urls: [https://b.io]}\n", []string{`upstreams[1].name: "index.docker.io" is the same registry as upstreams[0] ("docker.io")`}},
		{"negative ttl", up("    tagTTL: -1m\n"), []string{`line 4: upstreams[0].tagTTL: -1m must not be negative`}},
		{"zero revalidate", up("    revalidateTimeout: 0s\n"), []string{`upstreams[0].revalidateTimeout: 0s must be more than 0`}},
		{"missing password file", up("    username: bot\n    passwordFile: " + missing + "\n"), []string{`line 5: upstreams[0].passwordFile: cannot read ` + missing + `: no such file or directory`}},
		{"empty password file", up("    username: bot\n    passwordFile: " + emptyPass + "\n"), []string{`upstreams[0].passwordFile: ` + emptyPass + ` is empty`}},
		{"password without user", up("    passwordFile: " + pass + "\n"), []string{`upstreams[0].username: is required when passwordFile is set`}},
		{"user without password", up("    username: bot\n"), []string{`upstreams[0].passwordFile: is required when username is set`}},
		{"docker config and user", up("    username: bot\n    passwordFile: " + pass + "\n    dockerConfig: " + dockerCfg + "\n"), []string{`upstreams[0].dockerConfig: cannot be used together with username`}},
		{"missing docker config", up("    dockerConfig: " + missing + "\n"), []string{`upstreams[0].dockerConfig: cannot read ` + missing}},
		{"missing ca", up("    caFile: " + missing + "\n"), []string{`upstreams[0].caFile: cannot read ` + missing}},
		{"ca without cert", up("    caFile: " + notPEM + "\n"), []string{`upstreams[0].caFile: ` + notPEM + ` contains no PEM certificate`}},
		{"log level", "log: {level: verbose}\n", []string{`line 1: log.level: "verbose" is not one of debug, info, warn, error`}},
		{"log format", "log:\n  format: xml\n", []string{`line 2: log.format: "xml" is not one of auto, text, json`}},
		{"address", "http:\n  address: \"5000\"\n", []string{`line 2: http.address: "5000" is not host:port`}},
		{"address port", "http:\n  address: \":http\"\n", []string{`http.address: ":http" has port "http"`}},
		{"empty root", "storage:\n  root: \"\"\n", []string{`line 2: storage.root: must not be empty`}},
		{"all errors at once", "log: {level: x, format: y}\nstorage: {root: ''}\n", []string{"log.level", "log.format", "storage.root"}},
		{"bad size", "storage:\n  reserve: lots\n", []string{`line 2: storage.reserve: "lots" is not a size like 64MiB`}},
		{"tiny reserve", "storage:\n  reserve: 1MiB\n", []string{`line 2: storage.reserve: 1MiB is too small`}},
		{"negative fills", "fills:\n  max: -1\n", []string{`line 2: fills.max: -1 must not be negative`}},
		{"fills count not a number", "fills:\n  perUpstream: many\n", []string{`line 2: fills.perUpstream: "many" is not a whole number`}},
		{"unknown fills key", "fills:\n  maxBlob: 1GiB\n", []string{`line 2: unknown field "maxBlob" in fills (did you mean "maxBlobSize"?)`}},
		{"negative write timeout", "http:\n  writeTimeout: -1s\n", []string{`line 2: http.writeTimeout: -1s must not be negative`}},
		{"bad probe timeout", up("    probeTimeout: soon\n"), []string{`line 4: upstreams[0].probeTimeout: "soon" is not a duration`}},
		{"negative downAfter", up("    downAfter: -2\n"), []string{`line 4: upstreams[0].downAfter: -2 must not be negative`}},
		{"all type errors at once", up("    tagTTL: a\n    insecure: b\n"), []string{"upstreams[0].tagTTL", "upstreams[0].insecure"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(src, []byte(tt.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n%s\ndoes not contain\n%s", msg, w)
				}
			}
			for _, line := range strings.Split(msg, "\n") {
				if !strings.HasPrefix(line, src+": ") {
					t.Errorf("error line %q does not begin with the file name", line)
				}
			}
			for _, goish := range []string{"configs.", "not found in type", "cannot unmarshal", "!!"} {
				if strings.Contains(msg, goish) {
					t.Errorf("error %q leaks yaml.v3 wording %q", msg, goish)
				}
			}
		})
	}
}

// The limits and timings parse from their human forms, and the defaults
// apply where the file is silent.
func TestLimitsAndTimings(t *testing.T) {
	c, err := Parse(src, []byte(`http: {maxConnections: 200, maxConnectionsPerIP: 20, writeTimeout: 30s}
storage: {reserve: 128MiB}
fills: {max: 4, perUpstream: 2, queue: 5s, abandonAfter: 2s, maxBlobSize: 2GiB, timeout: 3h}
upstreams:
  - {name: a.io, urls: [https://a.io], requestTimeout: 40s, probeTimeout: 30s, probeInterval: 10s,
     downAfter: 5, downWindow: 2m, failback: 30s, maxFills: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	u := c.Upstreams[0]
	if c.HTTP.MaxConnections != 200 || c.HTTP.MaxConnectionsPerIP != 20 || c.HTTP.WriteTimeout.D() != 30*time.Second ||
		c.Storage.Reserve != 128<<20 || c.Fills.Max != 4 || c.Fills.MaxBlobSize != 2<<30 || c.Fills.Timeout.D() != 3*time.Hour ||
		u.RequestTimeout.D() != 40*time.Second || u.DownAfter != 5 || u.Failback.D() != 30*time.Second || u.MaxFills != 1 {
		t.Errorf("parsed %+v %+v %+v %+v", c.HTTP, c.Storage, c.Fills, u)
	}
	d, err := Parse(src, []byte("upstreams: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Fills.MaxBlobSize != DefaultMaxBlobSize || d.Storage.Reserve != 0 {
		t.Errorf("defaults: %+v %+v", d.Fills, d.Storage)
	}
	for in, want := range map[string]Size{"64MiB": 64 << 20, "1GiB": 1 << 30, "500MB": 500e6, "4096": 4096, "16 GiB": 16 << 30} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err != nil || s != want {
			t.Errorf("%q: %v %v", in, s, err)
		}
	}
	if Size(64<<20).String() != "64MiB" || Size(1500).String() != "1500" {
		t.Error("Size.String")
	}
}

func TestMissingFileIsNotExist(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Parse(src, []byte("upstreams:\n  - {name: a.io, urls: [https://a.io], caFile: "+missing+"}\n"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(%v, fs.ErrNotExist) = false", err)
	}
	_, err = Load(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), missing+": ") {
		t.Errorf("Load: %v", err)
	}
}

func TestLoad(t *testing.T) {
	p := writeFile(t, "outpost.yaml", "upstreams: []\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Upstreams) != 0 || c.HTTP.Address != DefaultAddress {
		t.Errorf("%+v", c)
	}
	bad := writeFile(t, "bad.yaml", "nope: 1\n")
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+": line 1: unknown field") {
		t.Errorf("Load bad file: %v", err)
	}
}

func TestDefaultsAndNormalisation(t *testing.T) {
	c, err := Parse(src, []byte(`upstreams:
  - name: a.io
    urls: [https://a.io/, "https://b.io:5000"]
    tagTTL: 0
  - name: b.io
    urls: [https://b.io]
    tagTTL: 1h30m
    revalidateTimeout: 500ms
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Upstreams[0], c.Upstreams[1]
	if a.TagTTL != 0 {
		t.Errorf("explicit tagTTL 0 became %v", a.TagTTL)
	}
	if a.RevalidateTimeout != DefaultRevalidateTimeout {
		t.Errorf("revalidateTimeout not defaulted: %v", a.RevalidateTimeout)
	}
	if a.URLs[0] != "https://a.io" || a.URLs[1] != "https://b.io:5000" {
		t.Errorf("urls not normalised: %v", a.URLs)
	}
	if b.TagTTL.D() != 90*time.Minute || b.RevalidateTimeout.D() != 500*time.Millisecond {
		t.Errorf("b durations: %v %v", b.TagTTL, b.RevalidateTimeout)
	}
	if c.Log.Level != "info" || c.Log.Format != "auto" || c.Storage.Root != DefaultStorageRoot {
		t.Errorf("defaults: %+v", c)
	}
}

func TestPasswordNeverPrinted(t *testing.T) {
	const secret = "hunter2-very-secret"
	c := &Config{Upstreams: []Upstream{{Name: "a.io", URLs: []string{"https://a.io"}, Username: "bot", Password: secret}}}
	u := c.Upstreams[0]

	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "upstream", u, "config", c)
	js, _ := json.Marshal(c)
	y, _ := yaml.Marshal(c)

	outputs := map[string]string{
		"slog": logged.String(), "json": string(js), "yaml": string(y),
		"String": u.String(), "GoString": u.GoString(),
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%q", "%x"} {
		outputs[verb+" config"] = fmt.Sprintf(verb, c)
		outputs[verb+" *config"] = fmt.Sprintf(verb, *c)
		outputs[verb+" upstream"] = fmt.Sprintf(verb, u)
		outputs[verb+" &upstream"] = fmt.Sprintf(verb, &u)
		outputs[verb+" upstreams"] = fmt.Sprintf(verb, c.Upstreams)
	}
	for what, out := range outputs {
		if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%x", secret)) {
			t.Errorf("%s shows the password: %s", what, out)
		}
	}
	if !strings.Contains(u.String(), "[redacted]") || !strings.Contains(u.String(), "a.io") {
		t.Errorf("String() = %s", u.String())
	}
}

func TestDurationYAML(t *testing.T) {
	for _, s := range []string{"5m", "2s", "1h30m", "1h", "0s", "500ms"} {
		var d Duration
		if err := yaml.Unmarshal([]byte(s), &d); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		out, err := yaml.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != s {
			t.Errorf("%s round-trips as %s", s, got)
		}
	}
}

func TestGoStringNamesUpstream(t *testing.T) {
	u := Upstream{Name: "a.io", Password: "pw"}
	for _, s := range []string{fmt.Sprintf("%#v", u), u.GoString()} {
		if !strings.HasPrefix(s, "configs.Upstream{") || !strings.Contains(s, `Password:"[redacted]"`) {
			t.Errorf("GoString = %s", s)
		}
	}
}

// The mirrors section in the issue's form parses unchanged, with defaults
// where it is silent.
func TestMirrorsExample(t *testing.T) {
	c, err := Parse(src, []byte(`upstreams:
  - name: docker.io
    urls: [https://registry-1.docker.io]
mirrors:
  - name: edge-base
    upstream: docker.io
    repositories: [library/alpine, "org/**"]
    tags:
      include: ['^v?[0-9]+\.[0-9]+']   # a tag must match one of these
      exclude: ['-rc']
      semver: '>=1.0.0 <3.0.0'
      latest: 5                  # newest N by semver, after the other filters
    platforms: [linux/arm64, linux/arm/v7]
    referrers: true
    interval: 6h
    window: '01:00-05:00'
    bandwidth: 10MiB/s
  - name: plain
    upstream: index.docker.io
    repositories: [alpine]
`))
	if err != nil {
		t.Fatal(err)
	}
	m := c.Mirrors[0]
	if m.Name != "edge-base" || m.Upstream != "docker.io" || len(m.Repositories) != 2 || m.Tags.Latest != 5 ||
		m.Tags.Semver != ">=1.0.0 <3.0.0" || len(m.Platforms) != 2 || !m.Referrers || m.Interval.D() != 6*time.Hour ||
		m.Jitter.D() != 36*time.Minute || m.Window.String() != "01:00-05:00" || m.Bandwidth != 10<<20 {
		t.Errorf("parsed %+v", m)
	}
	if p := c.Mirrors[1]; p.Interval != DefaultMirrorInterval || !p.Window.IsZero() || p.Bandwidth != 0 ||
		p.RateLimit.Min != 10 || p.RateLimit.Retry != DefaultRateLimitRetry {
		t.Errorf("defaults: %+v", p)
	}
	at := func(h, m int) time.Time { return time.Date(2026, 12, 1, h, m, 0, 0, time.Local) }
	w := c.Mirrors[0].Window
	for _, tc := range []struct {
		t    time.Time
		in   bool
		next time.Time
	}{{at(0, 59), false, at(1, 0)}, {at(1, 0), true, at(1, 0)}, {at(4, 59), true, at(4, 59)}, {at(5, 0), false, at(1, 0).AddDate(0, 0, 1)}} {
		if w.Contains(tc.t) != tc.in || !w.Next(tc.t).Equal(tc.next) {
			t.Errorf("%s: contains %v next %s", tc.t.Format("15:04"), w.Contains(tc.t), w.Next(tc.t))
		}
	}
	var wrap Window
	if err := wrap.UnmarshalText([]byte("22:00-04:00")); err != nil || !wrap.Contains(at(23, 0)) || !wrap.Contains(at(3, 0)) || wrap.Contains(at(12, 0)) {
		t.Errorf("a window over midnight: %v", err)
	}
}

func TestMirrorErrors(t *testing.T) {
	base := "upstreams:\n  - {name: docker.io, urls: [https://registry-1.docker.io]}\nmirrors:\n  - name: m\n    upstream: docker.io\n    repositories: [library/alpine]\n"
	for _, tc := range []struct {
		name, extra string
		want        string
	}{
		{"unknown upstream", "  - {name: n, upstream: ghcr.io, repositories: [a]}\n", `line 7: mirrors[1].upstream: "ghcr.io" is not a configured upstream (have: docker.io)`},
		{"duplicate name", "  - {name: m, upstream: docker.io, repositories: [a]}\n", `line 7: mirrors[1].name: "m" is already the name of mirrors[0]`},
		{"bad name", "  - {name: Big, upstream: docker.io, repositories: [a]}\n", `mirrors[1].name: "Big" is not a job name`},
		{"no repositories", "  - {name: n, upstream: docker.io}\n", `mirrors[1].repositories: needs at least one repository`},
		{"bad repository", "  - {name: n, upstream: docker.io, repositories: [Org/App]}\n", `mirrors[1].repositories[0]: "Org/App" is not a repository name`},
		{"bad pattern", "  - {name: n, upstream: docker.io, repositories: ['org/[x']}\n", `mirrors[1].repositories[0]: "org/[x" is not a valid pattern`},
		{"bad regexp", "    tags: {include: ['(']}\n", `line 7: mirrors[0].tags.include[0]: "(" is not a regular expression`},
		{"bad semver", "    tags: {semver: '>=one'}\n", `mirrors[0].tags.semver: ">=one" is not a version range`},
		{"negative latest", "    tags: {latest: -2}\n", `mirrors[0].tags.latest: -2 must not be negative`},
		{"bad platform", "    platforms: [arm64]\n", `line 7: mirrors[0].platforms[0]: "arm64" is not a platform like linux/arm64`},
		{"short interval", "    interval: 5s\n", `line 7: mirrors[0].interval: 5s is too short`},
		{"jitter too long", "    interval: 1h\n    jitter: 2h\n", `mirrors[0].jitter: 2h must be between 0 and the interval (1h)`},
		{"bad window", "    window: 1am-5am\n", `line 7: mirrors[0].window: "1am-5am" is not a daily window like 01:00-05:00`},
		{"bad bandwidth", "    bandwidth: fast\n", `line 7: mirrors[0].bandwidth: "fast" is not a rate like 10MiB/s`},
		{"unknown key", "    tag: {latest: 1}\n", `line 7: unknown field "tag" in mirrors[0] (did you mean "tags"?)`},
		{"bad rate limit", "    rateLimit: {min: -2, retry: 0s}\n", `mirrors[0].rateLimit.min: -2 must be -1 (never pause) or more`},
		{"short retry", "    rateLimit: {retry: 10ms}\n", `line 7: mirrors[0].rateLimit.retry: 10ms is too short`},
		{"too parallel", "    parallel: 100\n", `line 7: mirrors[0].parallel: 100 must be between 1 and 64`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(src, []byte(base+tc.extra))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant %q", err, tc.want)
			}
		})
	}
}
