package packaging

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// chrootEnv is the environment of every command run inside the chroot: a
// clean Debian one (the host's variables mean nothing there) plus the dead
// proxies and OTel settings of testenv.Env, so those stay defined once.
var chrootEnv = func() []string {
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8", "LC_ALL=C.UTF-8", "HOME=/root", "DEBIAN_FRONTEND=noninteractive",
	}
	for _, kv := range testenv.Env() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY":
			env = append(env, kv) // only testenv's: it drops the caller's
		default:
			if strings.HasPrefix(k, "OTEL_") {
				env = append(env, kv)
			}
		}
	}
	return env
}()

// chrootTools maps the host programs the chroot test runs to their paths
// (as requireTool found them, so the checked program is the one run).
type chrootTools map[string]string

// debianSuiteAndMirror picks the host's Debian release (if debootstrap knows
// it, else bookworm) and the mirror apt already uses.
func debianSuiteAndMirror() (string, string) {
	suite := "bookworm"
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VERSION_CODENAME="); ok {
				v = strings.Trim(v, `"`)
				if _, err := os.Stat("/usr/share/debootstrap/scripts/" + v); err == nil && v != "" {
					suite = v
				}
			}
		}
	}
	mirror := "http://deb.debian.org/debian"
	if b, err := os.ReadFile("/etc/apt/sources.list.d/debian.sources"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "URIs:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					mirror = f[0]
					break
				}
			}
		}
	} else if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "deb" && strings.HasPrefix(f[1], "http") {
				mirror = f[1]
				break
			}
		}
	}
	return suite, mirror
}

// prepareChroot creates a Debian amd64 minbase root at dir with debootstrap,
// run in a private mount namespace so that the /proc and /sys it mounts can
// never outlive it. With OUTPOST_PKGTEST_CACHE=DIR the pristine root is kept
// as a tarball in DIR and reused by later runs. It runs beside the package
// builds, on no test's goroutine, so it returns errors instead of failing.
func prepareChroot(dir string, tools chrootTools) (time.Duration, error) {
	start := time.Now()
	suite, mirror := debianSuiteAndMirror()
	var cache string
	if c := os.Getenv("OUTPOST_PKGTEST_CACHE"); c != "" {
		cache = filepath.Join(c, "debootstrap-"+suite+"-amd64-minbase.tar")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	if cache != "" {
		if _, err := os.Stat(cache); err == nil {
			if res := testenv.Run(5*time.Minute, os.Environ(), tools["tar"], "-C", dir, "--numeric-owner", "-xpf", cache); res.Err != nil {
				return 0, fmt.Errorf("unpacking cached chroot %s: %s", cache, res)
			}
			return time.Since(start), nil
		}
	}
	// debootstrap talks to the Debian mirror: the caller's environment, not
	// the tests' dead proxy.
	res := testenv.Run(10*time.Minute, os.Environ(), tools["unshare"], "--mount", "--propagation", "private",
		tools["debootstrap"], "--variant=minbase", "--arch=amd64", suite, dir, mirror)
	if res.Err != nil {
		// Its output is long: keep it in a log and show the end.
		log := dir + "-debootstrap.log"
		if err := os.WriteFile(log, append(res.Stdout, res.Stderr...), 0o644); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("debootstrap %s %s: %v\n%s", suite, mirror, res.Err, testenv.Tail(log, 30))
	}
	if cache != "" {
		if err := os.MkdirAll(filepath.Dir(cache), 0o755); err == nil {
			tmp := cache + ".tmp"
			if res := testenv.Run(5*time.Minute, os.Environ(), tools["tar"], "-C", dir, "--numeric-owner", "-cpf", tmp, "."); res.Err != nil {
				os.Remove(tmp)
				return 0, fmt.Errorf("caching chroot: %s", res)
			}
			if err := os.Rename(tmp, cache); err != nil {
				return 0, err
			}
		}
	}
	return time.Since(start), nil
}

// chroot is a throwaway Debian root the test installs packages into.
type chroot struct {
	t     *testing.T
	root  string
	tools chrootTools
}

func (c *chroot) path(p string) string { return filepath.Join(c.root, p) }

// run runs a command inside the chroot.
func (c *chroot) run(args ...string) testenv.Result {
	return testenv.Run(3*time.Minute, chrootEnv, c.tools["chroot"], append([]string{c.root}, args...)...)
}

// must runs a command inside the chroot and fails the test unless it exits 0.
func (c *chroot) must(args ...string) {
	c.t.Helper()
	if res := c.run(args...); res.Err != nil {
		c.t.Fatalf("chroot: %s: %s", strings.Join(args, " "), res)
	}
}

// output is must for a command whose output the test checks: it must also
// print nothing on stderr, and its stdout is returned.
func (c *chroot) output(args ...string) string {
	c.t.Helper()
	res := c.run(args...)
	if res.Err != nil || len(res.Stderr) > 0 {
		c.t.Fatalf("chroot: %s: %s", strings.Join(args, " "), res)
	}
	return string(res.Stdout)
}

// account returns the passwd (or group) entry for name, split at ':'.
func (c *chroot) account(file, name string) []string {
	b, err := os.ReadFile(c.path("etc/" + file))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Split(l, ":"); len(f) > 2 && f[0] == name {
			return f
		}
	}
	return nil
}

// owner returns uid, gid and permission bits (with the type bit for dirs).
func (c *chroot) owner(p string) (int, int, fs.FileMode, error) {
	fi, err := os.Lstat(c.path(p))
	if err != nil {
		return 0, 0, 0, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode() & (fs.ModeDir | fs.ModeSymlink | fs.ModePerm), nil
}

func (c *chroot) expectOwner(p string, uid, gid int, mode fs.FileMode) {
	c.t.Helper()
	u, g, m, err := c.owner(p)
	if err != nil {
		c.t.Errorf("%s: %v", p, err)
		return
	}
	if u != uid || g != gid || m != mode {
		c.t.Errorf("%s: %d:%d %v, want %d:%d %v", p, u, g, m, uid, gid, mode)
	}
}

func (c *chroot) exists(p string) bool {
	_, err := os.Lstat(c.path(p))
	return err == nil
}

// systemctl shim: a stand-in that logs its arguments, plus
// /run/systemd/system, make the maintainer scripts believe systemd runs.
const (
	shimPath = "usr/sbin/systemctl"
	shimLog  = "tmp/systemctl.log"
)

func (c *chroot) enableSystemdShim() {
	c.t.Helper()
	if c.exists(shimPath) {
		c.t.Fatalf("%s already exists in the chroot; refusing to replace it", shimPath)
	}
	script := "#!/bin/sh\necho \"$*\" >> /" + shimLog + "\nexit 0\n"
	if err := os.WriteFile(c.path(shimPath), []byte(script), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.MkdirAll(c.path("run/systemd/system"), 0o755); err != nil {
		c.t.Fatal(err)
	}
	os.Remove(c.path(shimLog))
}

func (c *chroot) disableSystemdShim() {
	c.t.Helper()
	for _, p := range []string{shimPath, shimLog, "run/systemd/system"} {
		if err := os.Remove(c.path(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.t.Fatal(err)
		}
	}
}

// systemctlCalls returns "verb unit..." for every logged systemctl call
// (options dropped) and empties the log.
func (c *chroot) systemctlCalls() []string {
	c.t.Helper()
	b, err := os.ReadFile(c.path(shimLog))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.t.Fatal(err)
	}
	os.Remove(c.path(shimLog))
	var calls []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var words []string
		for _, w := range strings.Fields(l) {
			if !strings.HasPrefix(w, "-") || w == "--now" {
				words = append(words, w)
			}
		}
		if len(words) > 0 {
			calls = append(calls, strings.Join(words, " "))
		}
	}
	return calls
}

// startingCalls are the systemctl verbs that would start the service.
func startingCalls(calls []string) []string {
	var bad []string
	for _, c := range calls {
		verb := strings.Fields(c)[0]
		switch {
		case verb == "start", verb == "restart", verb == "reload-or-restart",
			verb == "try-reload-or-restart", verb == "reload", strings.Contains(c, "--now"):
			bad = append(bad, c)
		}
	}
	return bad
}

// outpostRunning reports whether any process runs /usr/bin/outpost with its
// root at the chroot (the service was started by a maintainer script).
func (c *chroot) outpostRunning() bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		r, err := os.Readlink("/proc/" + e.Name() + "/root")
		if err != nil || r != c.root {
			continue
		}
		if exe, _ := os.Readlink("/proc/" + e.Name() + "/exe"); strings.HasSuffix(exe, "/usr/bin/outpost") {
			return true
		}
	}
	return false
}

const wantsLink = "etc/systemd/system/multi-user.target.wants/outpost.service"

func (c *chroot) enabled() bool {
	dst, err := os.Readlink(c.path(wantsLink))
	return err == nil && dst == "/lib/systemd/system/outpost.service"
}

// editConfig turns the shipped /etc/outpost/config.yaml into the one an
// admin would write for this test: free loopback ports, the docker.io
// upstream pointing at the loopback registry. Everything else stays.
func (c *chroot) editConfig(addr, admin, upstream string) []byte {
	c.t.Helper()
	p := c.path("etc/outpost/config.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		c.t.Fatal(err)
	}
	s := string(b)
	for _, r := range [][2]string{
		{"  address: \":5000\"\n", "  address: " + addr + "   # edited by the packaging test\n"},
		{"  address: 127.0.0.1:9500\n", "  address: " + admin + "\n"},
		{"    urls: [https://registry-1.docker.io]  # tried in order (failover)\n",
			"    urls: [http://" + upstream + "]\n    insecure: true\n"},
	} {
		if strings.Count(s, r[0]) != 1 {
			c.t.Fatalf("shipped config: %q does not occur exactly once", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	// WriteFile truncates the existing file: owner and mode stay as installed.
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return []byte(s)
}

// serveAsOutpost runs `outpost serve --config /etc/outpost/config.yaml` of
// the installed version inside the chroot as the outpost user (chroot
// --userspec execs, so the process is outpost itself) and waits until it
// answers.
func (c *chroot) serveAsOutpost(version string, uid, gid int, addr, admin string) *testenv.Proc {
	c.t.Helper()
	spec := fmt.Sprintf("%d:%d", uid, gid)
	p := testenv.Start(c.t, "outpost "+version+" in the chroot", filepath.Join(baseDir, "chroot-serve-"+version+".log"),
		chrootEnv, c.tools["chroot"], "--userspec="+spec, "--groups="+strconv.Itoa(gid), c.root,
		"/usr/bin/outpost", "serve", "--config", "/etc/outpost/config.yaml")
	waitServing(c.t, p, addr, admin, 30*time.Second)
	// The serving process is outpost, as the outpost user, inside the chroot.
	pid := p.Pid()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		c.t.Fatal(err)
	}
	wantUID := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", uid, uid, uid, uid)
	wantGID := fmt.Sprintf("Gid:\t%d\t%d\t%d\t%d", gid, gid, gid, gid)
	if !strings.Contains(string(status), wantUID) || !strings.Contains(string(status), wantGID) {
		c.t.Errorf("serving process %d is not outpost:outpost:\n%s", pid, status)
	}
	if r, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); r != c.root {
		c.t.Errorf("serving process root is %q, want the chroot %s", r, c.root)
	}
	return p
}

// dataFiles counts regular files under /var/lib/outpost and fails on any
// not owned by uid.
func (c *chroot) dataFiles(uid int) int {
	c.t.Helper()
	n := 0
	filepath.WalkDir(c.path("var/lib/outpost"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			c.t.Errorf("walk %s: %v", p, err)
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			c.t.Errorf("%s owned by uid %d, want outpost (%d)", p, st.Uid, uid)
		}
		if d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

func (c *chroot) dshState() []string {
	var out []string
	filepath.WalkDir(c.path("var/lib/systemd"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), "outpost") {
			out = append(out, strings.TrimPrefix(p, c.root))
		}
		return nil
	})
	return out
}

// TestDebInstallUpgradePurgeChroot installs the amd64 .deb into a throwaway
// debootstrap minbase chroot and walks through the package's life:
//
//  1. fresh install with "systemd running" (a logging systemctl shim and
//     /run/systemd/system): outpost user (system, nologin), files, owners and
//     modes, conffile, unit enabled but not started, `runuser -u outpost --
//     outpost version`; then outpost serves as the outpost user from the
//     packaged (edited) config and pulls an image through from a loopback
//     registry into /var/lib/outpost;
//  2. upgrade to 0.0.2, whose default config differs, with --force-confold:
//     the edited config is kept (the new one lands in .dpkg-dist), the
//     service is try-restarted, the cache survives and the new binary serves
//     it with the upstream gone;
//  3. remove: stopped and disabled; config, data and user kept;
//  4. purge: user, group, /etc/outpost, /var/lib/outpost and the enablement
//     state are gone;
//  5. the same install/purge with no systemd and no systemctl at all;
//  6. the .rpm scriptlets, run by `rpm --root` inside the same chroot:
//     install, upgrade over an edited %config(noreplace), erase.
func TestDebInstallUpgradePurgeChroot(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	if runtime.GOARCH != "amd64" {
		testenv.Missing(t, "the chroot test bootstraps an amd64 root; host is %s", runtime.GOARCH)
	}
	tools := chrootTools{}
	for _, tool := range []string{"debootstrap", "unshare", "chroot", "tar"} {
		tools[tool] = requireTool(t, tool)
	}

	dir := filepath.Join(baseDir, "chroot-amd64")
	type result struct {
		took time.Duration
		err  error
	}
	ready := make(chan result, 1)
	go func() { // bootstrap while the packages build
		took, err := prepareChroot(dir, tools)
		ready <- result{took, err}
	}()
	s1 := requirePackages(t, v1)
	s2 := requirePackages(t, v2)
	res := <-ready
	if res.err != nil {
		t.Fatal(res.err)
	}
	t.Logf("chroot ready in %s", res.took.Round(100*time.Millisecond))
	c := &chroot{t: t, root: dir, tools: tools}

	reg := testenv.StartRegistry(t, filepath.Join(baseDir, "chroot-upstream"), testenv.RegistryOptions{})
	upstream := reg.Addr
	digest := pushRandomImage(t, upstream, "edge/app", "v1")

	for _, v := range []*pkgSet{s1, s2} {
		if err := copyFile(v.Debs["amd64"], c.path("tmp/outpost_"+v.Version+".deb")); err != nil {
			t.Fatal(err)
		}
		if err := copyFile(v.RPMs["amd64"], c.path("tmp/outpost-"+v.Version+".rpm")); err != nil {
			t.Fatal(err)
		}
	}
	deb1, deb2 := "/tmp/outpost_0.0.1.deb", "/tmp/outpost_0.0.2.deb"

	// ---- 1. fresh install, systemd "running" --------------------------------
	c.enableSystemdShim()
	c.must("dpkg", "-i", deb1)
	calls := c.systemctlCalls()
	t.Logf("deb install: systemctl %q", calls)
	if bad := startingCalls(calls); len(bad) > 0 {
		t.Errorf("fresh install started the service: %q", bad)
	}
	if !c.enabled() {
		t.Errorf("fresh install: unit not enabled (%s missing)", wantsLink)
	}
	if c.outpostRunning() {
		t.Errorf("fresh install: outpost is running")
	}
	pw := c.account("passwd", "outpost")
	gr := c.account("group", "outpost")
	if pw == nil || gr == nil || len(pw) != 7 {
		t.Fatalf("outpost user/group missing: passwd %q group %q", pw, gr)
	}
	uid, _ := strconv.Atoi(pw[2])
	gid, _ := strconv.Atoi(pw[3])
	if g, _ := strconv.Atoi(gr[2]); g != gid {
		t.Errorf("outpost's primary group %d is not the outpost group %d", gid, g)
	}
	if uid == 0 || uid >= 1000 || pw[5] != "/var/lib/outpost" || pw[6] != "/usr/sbin/nologin" {
		t.Errorf("outpost user %q: want a system uid, home /var/lib/outpost, shell /usr/sbin/nologin", pw)
	}
	c.expectOwner("var/lib/outpost", uid, gid, fs.ModeDir|0o750)
	c.expectOwner("etc/outpost/config.yaml", 0, gid, 0o640)
	c.expectOwner("etc/outpost", 0, 0, fs.ModeDir|0o755)
	c.expectOwner("usr/bin/outpost", 0, 0, 0o755)
	c.expectOwner("lib/systemd/system/outpost.service", 0, 0, 0o644)
	if got := c.output("dpkg-query", "-W", "-f", "${Status} ${Version}\n${Conffiles}\n", "outpost"); !strings.HasPrefix(got, "install ok installed 0.0.1-1\n /etc/outpost/config.yaml ") {
		t.Errorf("dpkg-query after install:\n%s", got)
	}
	if out := c.output("runuser", "-u", "outpost", "--", "/usr/bin/outpost", "version"); !strings.HasPrefix(out, "outpost 0.0.1 (commit pkgtest, ") {
		t.Errorf("runuser -u outpost -- outpost version = %q", out)
	}
	// nologin really refuses a shell.
	if res := c.run("su", "-s", "/bin/sh", "-c", "true", "nobody"); res.Err != nil {
		t.Logf("(su sanity check unavailable: %s)", res)
	} else if res := c.run("su", "-c", "true", "outpost"); res.Err == nil {
		t.Errorf("su outpost ran a command although the shell is nologin: %s", res)
	}

	addr, admin := testenv.FreeAddr(t), testenv.FreeAddr(t)
	edited := c.editConfig(addr, admin, upstream)
	p := c.serveAsOutpost("0.0.1", uid, gid, addr, admin)
	n := pullVerify(t, "http://"+addr, "edge/app", "v1", digest)
	t.Logf("0.0.1 in the chroot, as outpost:outpost, pulled edge/app:v1 (%d blob bytes)", n)
	stopCleanly(t, p)
	files := c.dataFiles(uid)
	if files == 0 {
		t.Errorf("nothing was stored under /var/lib/outpost")
	}

	// ---- 2. upgrade over the edited config -----------------------------------
	c.must("dpkg", "-i", "--force-confold", deb2)
	calls = c.systemctlCalls()
	t.Logf("deb upgrade: systemctl %q", calls)
	if !slices.Contains(calls, "try-restart outpost.service") {
		t.Errorf("upgrade: no `systemctl try-restart outpost.service` in %q", calls)
	}
	if bad := startingCalls(calls); len(bad) > 0 {
		t.Errorf("upgrade: unexpected start/restart calls %q", bad)
	}
	if b, _ := os.ReadFile(c.path("etc/outpost/config.yaml")); string(b) != string(edited) {
		t.Errorf("upgrade replaced the edited /etc/outpost/config.yaml")
	}
	if b, err := os.ReadFile(c.path("etc/outpost/config.yaml.dpkg-dist")); err != nil || string(b) != string(s2.Config) {
		t.Errorf("upgrade: 0.0.2's config not in config.yaml.dpkg-dist (%v)", err)
	}
	c.expectOwner("etc/outpost/config.yaml", 0, gid, 0o640)
	c.expectOwner("var/lib/outpost", uid, gid, fs.ModeDir|0o750)
	if pw2 := c.account("passwd", "outpost"); strings.Join(pw2, ":") != strings.Join(pw, ":") {
		t.Errorf("upgrade changed the user: %q -> %q", pw, pw2)
	}
	if !c.enabled() {
		t.Errorf("upgrade: unit no longer enabled")
	}
	if out := c.output("runuser", "-u", "outpost", "--", "/usr/bin/outpost", "version"); !strings.HasPrefix(out, "outpost 0.0.2 ") {
		t.Errorf("after upgrade: version %q", out)
	}
	reg.Stop() // from here on only the cache can answer
	p = c.serveAsOutpost("0.0.2", uid, gid, addr, admin)
	pullVerify(t, "http://"+addr, "edge/app", digest, digest)
	stopCleanly(t, p)
	files = c.dataFiles(uid)

	// ---- 3. remove ------------------------------------------------------------
	c.must("dpkg", "-r", "outpost")
	calls = c.systemctlCalls()
	t.Logf("deb remove: systemctl %q", calls)
	if !slices.Contains(calls, "stop outpost.service") {
		t.Errorf("remove: no `systemctl stop outpost.service` in %q", calls)
	}
	if c.enabled() || c.exists(wantsLink) {
		t.Errorf("remove: unit still enabled")
	}
	for _, p := range []string{"usr/bin/outpost", "lib/systemd/system/outpost.service"} {
		if c.exists(p) {
			t.Errorf("remove: %s still there", p)
		}
	}
	if b, _ := os.ReadFile(c.path("etc/outpost/config.yaml")); string(b) != string(edited) {
		t.Errorf("remove: the edited config is gone (dpkg -r keeps conffiles)")
	}
	if n := c.dataFiles(uid); n != files {
		t.Errorf("remove: %d files under /var/lib/outpost, had %d (the cache is kept until purge)", n, files)
	}
	if c.account("passwd", "outpost") == nil {
		t.Errorf("remove: the outpost user is gone (kept until purge)")
	}
	if got := c.output("dpkg-query", "-W", "-f", "${Status}", "outpost"); got != "deinstall ok config-files" {
		t.Errorf("dpkg-query after remove: %q", got)
	}

	// ---- 4. purge ---------------------------------------------------------------
	c.must("dpkg", "--purge", "outpost")
	c.systemctlCalls()
	c.expectPurged()
	c.disableSystemdShim()

	// ---- 5. no systemd, no systemctl ------------------------------------------
	if c.exists("usr/bin/systemctl") || c.exists("bin/systemctl") {
		t.Fatalf("the minbase chroot unexpectedly has systemctl")
	}
	c.must("dpkg", "-i", deb1)
	if !c.enabled() {
		t.Errorf("install without systemd: unit not enabled (deb-systemd-helper)")
	}
	if pw := c.account("passwd", "outpost"); pw == nil {
		t.Errorf("install without systemd: no outpost user")
	} else {
		uid, _ := strconv.Atoi(pw[2])
		gid, _ := strconv.Atoi(pw[3])
		c.expectOwner("var/lib/outpost", uid, gid, fs.ModeDir|0o750)
		c.expectOwner("etc/outpost/config.yaml", 0, gid, 0o640)
	}
	c.must("dpkg", "--purge", "outpost")
	c.expectPurged()

	// ---- 6. rpm scriptlets ------------------------------------------------------
	rpm, ok := testenv.FindTool("rpm")
	if !ok {
		testenv.Missing(t, "rpm not found: rpm scriptlets not exercised")
	}
	c.rpmLifecycle(rpm, addr, admin, upstream)
}

// expectPurged checks that nothing of the package is left.
func (c *chroot) expectPurged() {
	c.t.Helper()
	if c.account("passwd", "outpost") != nil || c.account("group", "outpost") != nil {
		c.t.Errorf("purge: outpost user/group still there")
	}
	for _, p := range []string{"etc/outpost", "var/lib/outpost", wantsLink, "usr/bin/outpost"} {
		if c.exists(p) {
			c.t.Errorf("purge: %s still there", p)
		}
	}
	if st := c.dshState(); len(st) > 0 {
		c.t.Errorf("purge: deb-systemd-helper state left: %q", st)
	}
	if res := c.run("dpkg-query", "-W", "-f", "${Status}", "outpost"); res.Err == nil {
		if out := string(res.Stdout) + string(res.Stderr); strings.TrimSpace(out) != "" && !strings.Contains(out, "not-installed") {
			c.t.Errorf("purge: dpkg still knows outpost: %q", out)
		}
	}
}

// rpmLifecycle runs the .rpm's scriptlets for real: host rpm with --root
// runs them chrooted with the chroot's /bin/sh. Its database lives in the
// chroot. The systemctl shim stands in for a running systemd.
func (c *chroot) rpmLifecycle(rpmBin, addr, admin, upstream string) {
	t := c.t
	rpm := func(args ...string) {
		t.Helper()
		testenv.MustRun(t, 3*time.Minute, testenv.Env(), rpmBin, append([]string{"--root", c.root, "--dbpath", "/var/lib/rpm"}, args...)...)
	}
	c.enableSystemdShim()
	defer c.disableSystemdShim()
	rpm("--initdb")
	rpm("-ivh", "--nodeps", c.path("tmp/outpost-0.0.1.rpm"))
	calls := c.systemctlCalls()
	t.Logf("rpm install: systemctl %q", calls)
	if !slices.Contains(calls, "enable outpost.service") {
		t.Errorf("rpm install: no `systemctl enable outpost.service` in %q", calls)
	}
	if bad := startingCalls(calls); len(bad) > 0 {
		t.Errorf("rpm install started the service: %q", bad)
	}
	pw := c.account("passwd", "outpost")
	if pw == nil || pw[6] != "/usr/sbin/nologin" {
		t.Fatalf("rpm install: outpost user %q", pw)
	}
	uid, _ := strconv.Atoi(pw[2])
	gid, _ := strconv.Atoi(pw[3])
	c.expectOwner("var/lib/outpost", uid, gid, fs.ModeDir|0o750)
	c.expectOwner("etc/outpost/config.yaml", 0, gid, 0o640)

	edited := c.editConfig(addr, admin, upstream)
	if err := os.WriteFile(c.path("var/lib/outpost/keep-me"), []byte("cache"), 0o640); err != nil {
		t.Fatal(err)
	}
	rpm("-Uvh", "--nodeps", c.path("tmp/outpost-0.0.2.rpm"))
	calls = c.systemctlCalls()
	t.Logf("rpm upgrade: systemctl %q", calls)
	if !slices.Contains(calls, "try-restart outpost.service") {
		t.Errorf("rpm upgrade: no `systemctl try-restart outpost.service` in %q", calls)
	}
	if slices.Contains(calls, "stop outpost.service") || slices.Contains(calls, "disable outpost.service") || len(startingCalls(calls)) > 0 {
		t.Errorf("rpm upgrade: unexpected calls %q", calls)
	}
	if b, _ := os.ReadFile(c.path("etc/outpost/config.yaml")); string(b) != string(edited) {
		t.Errorf("rpm upgrade replaced the edited %%config(noreplace) file")
	}
	if !c.exists("etc/outpost/config.yaml.rpmnew") {
		t.Errorf("rpm upgrade: no config.yaml.rpmnew")
	}
	c.expectOwner("etc/outpost/config.yaml", 0, gid, 0o640)
	if out := c.output("runuser", "-u", "outpost", "--", "/usr/bin/outpost", "version"); !strings.HasPrefix(out, "outpost 0.0.2 ") {
		t.Errorf("rpm upgrade: version %q", out)
	}

	rpm("-e", "outpost")
	calls = c.systemctlCalls()
	t.Logf("rpm erase: systemctl %q", calls)
	if !slices.Contains(calls, "stop outpost.service") || !slices.Contains(calls, "disable outpost.service") {
		t.Errorf("rpm erase: want stop and disable, got %q", calls)
	}
	if c.exists("usr/bin/outpost") {
		t.Errorf("rpm erase: binary still there")
	}
	// rpm has no purge: data and user stay; the edited config is saved.
	if !c.exists("var/lib/outpost/keep-me") || c.account("passwd", "outpost") == nil {
		t.Errorf("rpm erase removed the cache or the user")
	}
	if b, err := os.ReadFile(c.path("etc/outpost/config.yaml.rpmsave")); err != nil || string(b) != string(edited) {
		t.Errorf("rpm erase: edited config not saved as config.yaml.rpmsave (%v)", err)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := bufio.NewReader(in).WriteTo(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
