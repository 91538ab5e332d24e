package conformance

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// withoutOCI drops OCI_* variables from env: they configure the suite, and
// a stray one in the caller's environment must not change a run.
func withoutOCI(env []string) []string {
	return slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "OCI_") })
}

// requireSuite returns the conformance suite binary: $OUTPOST_CONFORMANCE_BIN,
// or one built with `go install module@version` into a temporary GOBIN,
// outside outpost's go.mod (the module comes from the module cache or the
// Go module proxy, hence the caller's environment, not testenv.Env).
func requireSuite(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("OUTPOST_CONFORMANCE_BIN"); p != "" {
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		testenv.Missing(t, "go not on PATH: cannot build the conformance suite")
	}
	gobin := t.TempDir()
	env := append(withoutOCI(os.Environ()), "GOBIN="+gobin, "GOFLAGS=", "GOWORK=off")
	res := testenv.RunIn(t.TempDir(), 5*time.Minute, env, goBin, "install", suiteModule+"@"+suiteVersion)
	if res.Err != nil {
		testenv.Missing(t, "go install %s@%s: %v\n%s%s", suiteModule, suiteVersion, res.Err, res.Stdout, res.Stderr)
	}
	return filepath.Join(gobin, "conformance")
}

// startOutpost runs outpost with upstreamURL as its default upstream and
// returns its address.
func startOutpost(t *testing.T, dir, upstreamURL, tagTTL string) string {
	t.Helper()
	return testenv.StartOutpost(t, dir, testenv.OutpostConfig{Upstreams: []testenv.Upstream{
		{Name: "docker.io", URL: upstreamURL, Default: true, TagTTL: tagTTL},
	}}).Addr
}

// splitFront serves the registry API with reads (GET and HEAD, except upload
// sessions) from reads and everything else from writes.
func splitFront(t *testing.T, writes, reads string) string {
	t.Helper()
	w, err := url.Parse(writes)
	if err != nil {
		t.Fatal(err)
	}
	r, err := url.Parse(reads)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		target := r
		if (pr.In.Method != http.MethodGet && pr.In.Method != http.MethodHead) || strings.Contains(pr.In.URL.Path, "/blobs/uploads/") {
			target = w
		}
		pr.SetURL(target)
		pr.Out.Host = pr.In.Host // upload Locations the upstream makes point back here
	}}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// resultsDir is where a suite run writes results.yaml, junit.xml and
// report.html: under $OUTPOST_CONFORMANCE_RESULTS when set (to keep them as
// CI artifacts), else in the test's temporary directory.
func resultsDir(t *testing.T, tmp, name string) string {
	if d := os.Getenv("OUTPOST_CONFORMANCE_RESULTS"); d != "" {
		abs, err := filepath.Abs(filepath.Join(d, name))
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	return filepath.Join(tmp, name)
}
