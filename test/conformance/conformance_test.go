package conformance

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

const (
	// suiteModule is the conformance suite's Go module (its main package).
	suiteModule = "github.com/opencontainers/distribution-spec/conformance"
	// suiteVersion pins the suite; `go list -m -versions` shows none, so
	// it is a pseudo-version of the distribution-spec main branch.
	suiteVersion = "v0.0.0-20260831232431-97274622c111"

	// repo1 is the repository the suite reads. To outpost it is a
	// two-component name without a registry prefix, so it goes to the
	// default upstream unchanged.
	repo1 = "conformance/test"
	// repo2 is the suite's second repository (cross-repository mounts).
	repo2 = "conformance/test2"
)

// noDelete turns off the suite's delete tests: a cache keeps what it
// served, so "gone right after DELETE" cannot hold behind it.
var noDelete = []string{"OCI_API_TAGS_DELETE=false", "OCI_API_MANIFESTS_DELETE=false", "OCI_API_BLOBS_DELETE=false"}

// TestOCIConformancePull runs the distribution-spec conformance suite in its
// read-only mode against content outpost caches from a seeded upstream,
// first with the upstream up, then with it stopped; in between, the full
// suite runs with its pulls served by outpost (see package doc).
func TestOCIConformancePull(t *testing.T) {
	// Build and find everything first: a missing piece skips (fails in CI)
	// before any process starts.
	testenv.Outpost(t)
	testenv.RequireRegistry(t)
	suite := requireSuite(t)
	dir := t.TempDir()

	// 1. upstream, seeded by the suite's own push workflow.
	up := testenv.StartRegistry(t, filepath.Join(dir, "upstream"), testenv.RegistryOptions{})
	upAddr := up.Addr
	seed := runSuite(t, suite, resultsDir(t, dir, "seed"), append([]string{"OCI_REGISTRY=" + upAddr}, noDelete...)...)
	// The upstream's own conformance gaps (distribution v3 has no referrers
	// API and no sha512) are not outpost's business; only what it stored
	// is used below.
	t.Logf("seeding the upstream with the suite's push workflow: %s", seed.summary())

	// 2. what the upstream holds.
	content := enumerate(t, up.Data, upAddr)
	t.Logf("upstream %s holds %d tags, %d manifests, %d blobs, %d referrer subjects",
		repo1, len(content.tags), len(content.manifests), len(content.blobs), len(content.subjects))

	// 3. outpost in front of it, warmed.
	opAddr := startOutpost(t, filepath.Join(dir, "outpost"), "http://"+upAddr, "5m")
	warm(t, opAddr, content)

	roEnv := []string{
		"OCI_REGISTRY=" + opAddr,
		"OCI_API_PUSH=false",
		"OCI_RO_DATA_TAGS=" + strings.Join(content.tags, " "),
		"OCI_RO_DATA_MANIFESTS=" + strings.Join(content.manifests, " "),
		"OCI_RO_DATA_BLOBS=" + strings.Join(content.blobs, " "),
		"OCI_RO_DATA_REFERRERS=" + strings.Join(content.subjects, " "),
	}

	// 4. the read-only suite, online (and, after 5., offline).
	t.Run("online", func(t *testing.T) {
		runSuite(t, suite, resultsDir(t, dir, "online"), roEnv...).check(t)
	})
	// 5. the full read-write suite through a split front: pulls go to a
	// second outpost, pushes to the upstream behind it.
	t.Run("split", func(t *testing.T) {
		fresh := startOutpost(t, filepath.Join(dir, "outpost-fresh"), "http://"+upAddr, "0s")
		front := splitFront(t, "http://"+upAddr, "http://"+fresh)
		split := runSuite(t, suite, resultsDir(t, dir, "split"), append([]string{
			"OCI_REGISTRY=" + front,
			"OCI_REPO1=conformance/split1",
			"OCI_REPO2=conformance/split2",
		}, noDelete...)...)
		split.checkAgainst(t, seed)
	})

	up.Stop()
	if err := testenv.PingV2(upAddr); err == nil {
		t.Fatalf("upstream %s still answers after it was stopped", upAddr)
	}
	t.Run("offline", func(t *testing.T) {
		runSuite(t, suite, resultsDir(t, dir, "offline"), roEnv...).check(t)
	})
}

// upstreamContent is what the seeded upstream holds in repo1, as the
// suite's OCI_RO_DATA_* lists want it.
type upstreamContent struct {
	tags      []string
	manifests []string // digests
	blobs     []string // digests
	subjects  []string // digests named as subject by some manifest
}

// enumerate lists repo1's tags, manifests and blobs from the registry's
// filesystem layout (docker/registry/v2/repositories/<repo>/{_manifests,_layers}),
// which, unlike the API, also reveals untagged manifests such as referrers.
// Each entry is then checked through the upstream's API; what the upstream
// does not serve (e.g. sha512 content distribution rejects) is dropped.
func enumerate(t *testing.T, dataDir, upAddr string) upstreamContent {
	t.Helper()
	repoDir := filepath.Join(dataDir, "docker", "registry", "v2", "repositories", filepath.FromSlash(repo1))
	links := func(sub string) []string {
		var out []string
		root := filepath.Join(repoDir, sub)
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "link" {
				return nil
			}
			rel, _ := filepath.Rel(root, filepath.Dir(path))
			out = append(out, filepath.ToSlash(rel))
			return nil
		})
		return out
	}
	var c upstreamContent
	base := "http://" + upAddr + "/v2/" + repo1

	for _, rel := range links(filepath.Join("_manifests", "tags")) {
		tag, ok := strings.CutSuffix(rel, "/current")
		if !ok {
			continue // tags/<tag>/index/<algo>/<hex>/link: history
		}
		if resp, _, err := testenv.Fetch("HEAD", base+"/manifests/"+tag, map[string]string{"Accept": testenv.ManifestAccept}); err == nil && resp.StatusCode == 200 {
			c.tags = append(c.tags, tag)
		} else {
			t.Logf("upstream does not serve tag %s (%v), left out", tag, statusOf(resp, err))
		}
	}
	subjects := map[string]bool{}
	for _, rel := range links(filepath.Join("_manifests", "revisions")) {
		dig := strings.Replace(rel, "/", ":", 1)
		resp, body, err := testenv.Fetch("GET", base+"/manifests/"+dig, map[string]string{"Accept": testenv.ManifestAccept})
		if err != nil || resp.StatusCode != 200 {
			t.Logf("upstream does not serve manifest %s (%v), left out", dig, statusOf(resp, err))
			continue
		}
		c.manifests = append(c.manifests, dig)
		var m struct {
			Subject *struct {
				Digest string `json:"digest"`
			} `json:"subject"`
		}
		if json.Unmarshal(body, &m) == nil && m.Subject != nil && m.Subject.Digest != "" {
			subjects[m.Subject.Digest] = true
		}
	}
	for _, rel := range links("_layers") {
		dig := strings.Replace(rel, "/", ":", 1)
		if resp, _, err := testenv.Fetch("HEAD", base+"/blobs/"+dig, nil); err == nil && resp.StatusCode == 200 {
			c.blobs = append(c.blobs, dig)
		} else {
			t.Logf("upstream does not serve blob %s (%v), left out", dig, statusOf(resp, err))
		}
	}
	for s := range subjects {
		c.subjects = append(c.subjects, s)
	}
	sort.Strings(c.tags)
	sort.Strings(c.manifests)
	sort.Strings(c.blobs)
	sort.Strings(c.subjects)
	if len(c.tags) == 0 || len(c.manifests) == 0 || len(c.blobs) == 0 {
		t.Fatalf("seeding left too little in %s: %d tags, %d manifests, %d blobs", repoDir, len(c.tags), len(c.manifests), len(c.blobs))
	}
	return c
}

func statusOf(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// warm pulls all of content through outpost once, so that the offline run
// can be answered from the cache. Anything outpost cannot serve here is a
// failure of its own.
func warm(t *testing.T, opAddr string, c upstreamContent) {
	t.Helper()
	base := "http://" + opAddr + "/v2/" + repo1
	get := func(what, path string, header map[string]string, wantDigest string) {
		resp, body, err := testenv.Fetch("GET", base+path, header)
		switch {
		case err != nil:
			t.Errorf("warming the cache: GET %s (%s): %v", path, what, err)
		case resp.StatusCode != 200:
			t.Errorf("warming the cache: GET %s (%s): status %d, want 200: %.300s", path, what, resp.StatusCode, body)
		case wantDigest != "" && digestOf(wantDigest, body) != wantDigest:
			t.Errorf("warming the cache: GET %s (%s): body digest %s, want %s", path, what, digestOf(wantDigest, body), wantDigest)
		}
	}
	get("tag list", "/tags/list", nil, "")
	for _, tag := range c.tags {
		get("manifest by tag", "/manifests/"+tag, map[string]string{"Accept": testenv.ManifestAccept}, "")
	}
	for _, d := range c.manifests {
		get("manifest by digest", "/manifests/"+d, map[string]string{"Accept": testenv.ManifestAccept}, d)
	}
	for _, d := range c.blobs {
		get("blob", "/blobs/"+d, nil, d)
	}
	for _, d := range c.subjects {
		get("referrers", "/referrers/"+d, nil, "")
	}
}

// digestOf computes the digest of b with the algorithm of like.
func digestOf(like string, b []byte) string {
	if strings.HasPrefix(like, "sha512:") {
		s := sha512.Sum512(b)
		return "sha512:" + hex.EncodeToString(s[:])
	}
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// suiteRun is one finished run of the conformance binary.
type suiteRun struct {
	res     testenv.Result
	result  string            // overall status: Pass, FAIL, …
	cases   []suiteCase       // every node of the suite's result tree
	outputs map[string]string // recorded requests/responses of failed tests, by name
}

// suiteCase is one node of the suite's result tree.
type suiteCase struct {
	name   string
	depth  int
	status string // Pass, Skip, Disabled, FAIL, Error, Unknown
	leaf   bool
	errs   []string
}

// runSuite runs the conformance binary with env (OCI_* settings) in its own
// working directory, results going to results.
//
// The suite's text report on stdout is parsed rather than its junit.xml:
// with push disabled this suite version panics in ReportResultsYAML (the
// skipped blob-API tests mark a data status without test data) before it
// writes junit.xml, but after it printed the report. At OCI_LOG=debug it
// also logs each failed test's requests and responses to stderr.
func runSuite(t *testing.T, suite, results string, env ...string) suiteRun {
	t.Helper()
	work := t.TempDir() // the suite reads ./oci-conformance.yaml if present
	env = append(withoutOCI(testenv.Env()),
		append([]string{
			"OCI_VERSION=1.1",
			"OCI_TLS=disabled",
			"OCI_REPO1=" + repo1,
			"OCI_REPO2=" + repo2,
			"OCI_LOG=debug",
			"OCI_RESULTS_DIR=" + results,
		}, env...)...)
	r := suiteRun{outputs: map[string]string{}}
	r.res = testenv.RunIn(work, 2*time.Minute, env, suite)
	r.parseReport(string(r.res.Stdout))
	r.parseLog(string(r.res.Stderr))
	return r
}

var (
	reportNode   = regexp.MustCompile(`^( *)(` + regexp.QuoteMeta(suiteRoot) + `.*): (Pass|Skip|Disabled|FAIL|Error|Unknown)$`)
	reportErr    = regexp.MustCompile(`^ * - (.*)$`)
	reportResult = regexp.MustCompile(`(?m)^OCI Conformance Result: (\S+)$`)
	logFailure   = regexp.MustCompile(`msg="failed test output" name=("(?:[^"\\]|\\.)*") output=("(?:[^"\\]|\\.)*")`)
)

// suiteRoot is the name of the root of the suite's result tree.
const suiteRoot = "OCI Conformance Test"

// parseReport reads the result tree the suite prints: one "name: status"
// line per test, indented by depth, leaf errors as " - error" lines below.
func (r *suiteRun) parseReport(out string) {
	if m := reportResult.FindStringSubmatch(out); m != nil {
		r.result = m[1]
	}
	tree, _, _ := strings.Cut(out, "\nConfiguration:\n")
	var cur *suiteCase
	for line := range strings.SplitSeq(tree, "\n") {
		if m := reportNode.FindStringSubmatch(line); m != nil {
			depth := len(m[1]) / 2
			if n := len(r.cases); n > 0 && depth > r.cases[n-1].depth {
				r.cases[n-1].leaf = false
			}
			r.cases = append(r.cases, suiteCase{name: m[2], depth: depth, status: m[3], leaf: true})
			cur = &r.cases[len(r.cases)-1]
			continue
		}
		if cur == nil {
			continue
		}
		if m := reportErr.FindStringSubmatch(line); m != nil {
			cur.errs = append(cur.errs, m[1])
		} else if len(cur.errs) > 0 && line != "" {
			cur.errs[len(cur.errs)-1] += "\n" + line // multi-line error
		}
	}
}

// parseLog collects the "failed test output" debug records.
func (r *suiteRun) parseLog(log string) {
	for _, m := range logFailure.FindAllStringSubmatch(log, -1) {
		name, err1 := strconv.Unquote(m[1])
		output, err2 := strconv.Unquote(m[2])
		if err1 == nil && err2 == nil {
			r.outputs[name] = output
		}
	}
}

func (r suiteRun) summary() string {
	n := map[string]int{}
	leaves := 0
	for _, c := range r.cases {
		if c.leaf {
			leaves++
			n[c.status]++
		}
	}
	return fmt.Sprintf("result %s: %d tests, %d passed, %d failed, %d errors, %d skipped, %d disabled",
		r.result, leaves, n["Pass"], n["FAIL"], n["Error"], n["Skip"], n["Disabled"])
}

// check fails t for every failed or errored test of the run, and for a run
// that did not report Pass.
func (r suiteRun) check(t *testing.T) {
	t.Helper()
	r.requireReport(t)
	t.Logf("%s", r.summary())
	failed := 0
	skipped := map[string]int{}
	for _, c := range r.cases {
		switch {
		case !c.leaf || c.status == "Pass":
		case c.status == "Skip" || c.status == "Disabled":
			skipped[strings.TrimPrefix(c.name, suiteRoot+"/")+" ("+c.status+")"]++
		default:
			failed++
			r.fail(t, c, "")
		}
	}
	if len(skipped) > 0 {
		t.Logf("skipped or disabled (push and delete are refused by a read-only cache): %s", countList(skipped))
	}
	if failed == 0 && r.result != "Pass" {
		t.Errorf("conformance result %s (exit %v) although no test failed:\n%s", r.result, r.res.Err, clip(string(r.res.Stdout), 8000))
	}
}

// checkAgainst fails t for every test that failed in r but not in base, a
// run of the same configuration directly against the upstream: what the
// upstream itself does not conform to cannot be asked of a cache in front
// of it.
func (r suiteRun) checkAgainst(t *testing.T, base suiteRun) {
	t.Helper()
	r.requireReport(t)
	base.requireReport(t)
	baseFailed := map[string]bool{}
	for _, c := range base.cases {
		if c.leaf && (c.status == "FAIL" || c.status == "Error") {
			baseFailed[c.name] = true
		}
	}
	t.Logf("%s (directly against the upstream: %s)", r.summary(), base.summary())
	excused := map[string]int{}
	for _, c := range r.cases {
		if !c.leaf || (c.status != "FAIL" && c.status != "Error") {
			continue
		}
		if baseFailed[c.name] {
			excused[strings.TrimPrefix(c.name, suiteRoot+"/")]++
			continue
		}
		r.fail(t, c, " (passes directly against the upstream)")
	}
	if len(excused) > 0 {
		t.Logf("failing here and directly against the upstream, so not counted: %s", countList(excused))
	}
}

func (r suiteRun) requireReport(t *testing.T) {
	t.Helper()
	if r.result == "" || len(r.cases) == 0 {
		t.Fatalf("the conformance suite printed no report; exit %v\nstdout:\n%s\nstderr:\n%s",
			r.res.Err, clip(string(r.res.Stdout), 8000), clip(string(r.res.Stderr), 8000))
	}
}

// fail reports one failed test with its errors and recorded requests.
func (r suiteRun) fail(t *testing.T, c suiteCase, note string) {
	t.Helper()
	msg := fmt.Sprintf("conformance %s%s: %s\n  errors:\n    %s", c.status, note, c.name,
		strings.ReplaceAll(strings.Join(c.errs, "\n"), "\n", "\n    "))
	if out := r.outputs[c.name]; out != "" {
		msg += "\n  requests and responses:\n" + indent(clip(out, 3000), "    ")
	}
	t.Error(msg)
}

// countList renders {"a": 2, "b": 1} as "a ×2; b".
func countList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		if m[k] > 1 {
			keys[i] = fmt.Sprintf("%s ×%d", k, m[k])
		}
	}
	return strings.Join(keys, "; ")
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("\n… (%d more bytes)", len(s)-n)
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
