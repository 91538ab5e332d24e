// Package servicetest holds test helpers for installing a service without
// touching the host: a logging systemctl shim, a mount-namespace sandbox with
// overlays on /etc and /run, and "systemd-analyze verify" of a unit file.
// Only tests import it.
package servicetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Require skips the test when ok is false, except under CI=true, where the
// tooling is expected to be there and a skip would hide a regression.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", why)
	}
	t.Skip(why)
}

// Systemctl writes a fake systemctl into a new directory and puts it first
// on PATH for the rest of the test. It appends each call's arguments to the
// returned log file, keeps the unit's state (start, restart: active; stop:
// inactive), and answers is-active and list-unit-files from that state and
// from whether the unit file exists in unitDir, as kardianos's Status expects.
func Systemctl(t testing.TB, unitDir string) (log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "calls.log")
	state := filepath.Join(dir, "state")
	script := fmt.Sprintf(`#!/bin/sh
echo "$*" >> %[1]q
unit=""
for a in "$@"; do case "$a" in *.service) unit="$a";; esac; done
case "$1" in
start|restart) echo active > %[2]q ;;
stop) echo inactive > %[2]q ;;
is-active)
	if [ -f %[3]q/"$unit" ] && [ "$(cat %[2]q 2>/dev/null)" = active ]; then echo active; exit 0; fi
	echo inactive; exit 3 ;;
list-unit-files)
	if [ -f %[3]q/"$unit" ]; then echo "$unit enabled"; fi ;;
esac
exit 0
`, log, state, unitDir)
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return log
}

// Calls returns the logged systemctl calls, one per element.
func Calls(t testing.TB, log string) []string {
	t.Helper()
	b, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// VerifyUnit runs "systemd-analyze verify" on the unit text as if it were
// installed at /etc/systemd/system/<name> in a staged root holding the
// distribution's units, an executable at exe and /bin/kill. Any output fails
// the test: an unknown key is only a warning with exit status 0.
func VerifyUnit(t testing.TB, name, unit, exe string) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	Require(t, err == nil, "systemd-analyze is not installed")
	_, err = os.Stat("/lib/systemd/system/multi-user.target")
	Require(t, err == nil, "no /lib/systemd/system units to stage")

	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "etc/systemd/system", name), unit, 0o644)
	mustWrite(t, filepath.Join(root, exe), "#!/bin/sh\n", 0o755)
	mustWrite(t, filepath.Join(root, "bin/kill"), "#!/bin/sh\n", 0o755)
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system/.", mustDir(t, filepath.Join(root, "lib/systemd/system"))).CombinedOutput(); err != nil {
		t.Fatalf("staging units: %v: %s", err, out)
	}

	args := []string{"verify", "--root=" + root, "/etc/systemd/system/" + name}
	cmd := exec.Command(analyze, args...)
	if os.Geteuid() == 0 {
		// As root, verify leaves /run/systemd/systemd-units-load behind;
		// run it over a private tmpfs so the host keeps no trace.
		if unshare, err := exec.LookPath("unshare"); err == nil {
			cmd = exec.Command(unshare, append([]string{"-m", "--propagation", "private", "sh", "-ec",
				`mount -t tmpfs tmpfs /run/systemd && exec "$0" "$@"`, analyze}, args...)...)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s\nunit:\n%s", err, out, unit)
	}
}

func mustDir(t testing.TB, d string) string {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func mustWrite(t testing.TB, path, data string, mode os.FileMode) {
	t.Helper()
	mustDir(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}
