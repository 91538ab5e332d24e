package main

import (
	"bytes"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/outpost-oci/outpost/service/servicetest"
	"github.com/urfave/cli/v2"
)

// TestServiceCommandSandboxed runs "outpost service ..." for real, with the
// systemd backend forced, inside a mount namespace whose /etc and /run are
// throwaway overlays and with a logging systemctl on PATH. It proves that
// install writes /etc/systemd/system/outpost.service with the hardening,
// User=outpost, ExecStart=<this binary> serve --config <absolute path> and
// ReadWritePaths=<storage root>, that systemd-analyze verify accepts it with
// no output, that the storage root is created, that status/start/uninstall
// behave and call systemctl as expected, and that bad input fails clearly
// before anything is written.
func TestServiceCommandSandboxed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("systemd is Linux only")
	}
	if !servicetest.Sandbox(t) {
		return // the child did the work and passed
	}
	t.Setenv("OUTPOST_SERVICE_FORCE_SYSTEMD", "1")
	const unitFile = "/etc/systemd/system/outpost.service"
	log := servicetest.Systemctl(t, filepath.Dir(unitFile))
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	lookupUser = func(name string) (*user.User, error) {
		if name != "outpost" {
			return nil, user.UnknownUserError(name)
		}
		return &user.User{Username: "outpost", Uid: me.Uid, Gid: me.Gid}, nil
	}
	t.Cleanup(func() { lookupUser = user.Lookup })

	dir := t.TempDir()
	t.Chdir(dir)
	root := filepath.Join(dir, "data")
	writeServiceFile(t, "config.yaml", "http:\n  address: 127.0.0.1:5000\nstorage:\n  root: "+root+"\n")
	writeServiceFile(t, "relative.yaml", "http:\n  address: 127.0.0.1:5000\nstorage:\n  root: ./data\n")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "--config", "missing.yaml"}, "cannot read config file"},
		{[]string{"install", "--config", "relative.yaml"}, `storage.root "./data" is relative`},
		{[]string{"install", "--config", "config.yaml", "--user", "nobody-here"}, `user "nobody-here" does not exist: create it first`},
		{[]string{"start"}, "not installed"},
		{[]string{"uninstall"}, "not installed"},
		{[]string{"bogus"}, `unknown service command "bogus"`},
	} {
		if _, _, err := runService(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("service %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(unitFile); !os.IsNotExist(err) {
		t.Fatalf("a failed command left %s: %v", unitFile, err)
	}
	if calls := servicetest.Calls(t, log); len(calls) != 0 && !onlyProbes(calls) {
		t.Fatalf("failed commands called systemctl: %q", calls)
	}

	out, _ := mustRunService(t, "status")
	if out != "not installed\n" {
		t.Fatalf("status before install = %q", out)
	}
	_, stderr := mustRunService(t, "install", "--config", "config.yaml") // relative: made absolute
	if !strings.Contains(stderr, "warning: "+dir) {
		t.Errorf("no warning about a config under /tmp (PrivateTmp hides it): %q", stderr)
	}
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	for _, line := range []string{
		`ExecStart=` + exe + ` "serve" "--config" "` + filepath.Join(dir, "config.yaml") + `"`,
		"User=outpost", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=" + root,
		"WorkingDirectory=" + root, "PrivateTmp=yes", "ProtectHome=yes", "Restart=on-failure",
		"LimitNOFILE=65536", "ExecReload=/bin/kill -HUP $MAINPID", "WantedBy=multi-user.target",
	} {
		if !bytes.Contains(unit, []byte("\n"+line+"\n")) {
			t.Errorf("unit lacks line %q:\n%s", line, unit)
		}
	}
	t.Logf("installed %s:\n%s", unitFile, unit)
	servicetest.VerifyUnit(t, "outpost.service", string(unit), exe)
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Errorf("storage root after install: %v %v", fi, err)
	} else if st := fi.Sys().(*syscall.Stat_t); strconv.Itoa(int(st.Uid)) != me.Uid {
		t.Errorf("storage root owned by uid %d, want %s", st.Uid, me.Uid)
	}
	if _, _, err := runService(t, "install", "--config", "config.yaml"); err == nil || !strings.Contains(err.Error(), "already installed") {
		t.Errorf("second install: %v", err)
	}

	if out, _ := mustRunService(t, "status"); out != "stopped\n" {
		t.Errorf("status after install = %q", out)
	}
	mustRunService(t, "start")
	if out, _ := mustRunService(t, "status"); out != "running\n" {
		t.Errorf("status after start = %q", out)
	}
	mustRunService(t, "uninstall")
	if _, err := os.Stat(unitFile); !os.IsNotExist(err) {
		t.Fatalf("%s after uninstall: %v", unitFile, err)
	}
	if out, _ := mustRunService(t, "status"); out != "not installed\n" {
		t.Errorf("status after uninstall = %q", out)
	}

	var calls []string
	for _, c := range servicetest.Calls(t, log) {
		if !onlyProbes([]string{c}) {
			calls = append(calls, c)
		}
	}
	want := []string{"enable outpost.service", "daemon-reload", "start outpost.service",
		"stop outpost.service", "disable outpost.service", "daemon-reload"}
	t.Logf("systemctl calls: %q", calls)
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("systemctl calls %q, want %q", calls, want)
	}
}

// runService runs "outpost service args..." through a CLI holding only
// serviceCommand, so it does not depend on main.go's command list.
func runService(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{Name: "outpost", Writer: &out, ErrWriter: &errOut, Commands: []*cli.Command{serviceCommand()}}
	err = app.Run(append([]string{"outpost", "service"}, args...))
	return out.String(), errOut.String(), err
}

func mustRunService(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := runService(t, args...)
	if err != nil {
		t.Fatalf("service %v: %v", args, err)
	}
	return stdout, stderr
}

// onlyProbes reports whether calls are all status queries.
func onlyProbes(calls []string) bool {
	for _, c := range calls {
		if !strings.HasPrefix(c, "is-active ") && !strings.HasPrefix(c, "list-unit-files ") {
			return false
		}
	}
	return true
}

func writeServiceFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
