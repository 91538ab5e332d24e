package service

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	kservice "github.com/kardianos/service"
	"github.com/outpost-oci/outpost/service/servicetest"
)

var testConfig = Config{
	Name:             "outpost",
	Description:      "Outpost OCI image pull-through cache",
	UserName:         "outpost",
	Executable:       "/usr/bin/outpost",
	Arguments:        []string{"serve", "--config", "/etc/outpost/config.yaml"},
	WorkingDirectory: "/var/lib/outpost",
	ReadWritePaths:   []string{"/var/lib/outpost"},
}

const wantUnit = `[Unit]
Description=Outpost OCI image pull-through cache
ConditionFileIsExecutable=/usr/bin/outpost
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=simple
User=outpost
ExecStart=/usr/bin/outpost "serve" "--config" "/etc/outpost/config.yaml"
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
TimeoutStartSec=30s
TimeoutStopSec=30s
LimitNOFILE=65536
WorkingDirectory=/var/lib/outpost
UMask=0027

NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths=/var/lib/outpost
PrivateTmp=yes
PrivateDevices=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`

// TestUnitMatchesPackagedUnit keeps the installed unit in step with the
// static one the .deb and .rpm ship: for the packages' paths, every
// directive matches except those that name the binary, which the installed
// unit takes from the running program (ExecStart is also quoted, and
// ConditionFileIsExecutable is kardianos's), Documentation and Group=.
func TestUnitMatchesPackagedUnit(t *testing.T) {
	static, err := os.ReadFile("../packaging/outpost.service")
	if err != nil {
		t.Skipf("no packaged unit to compare with: %v", err)
	}
	directives := func(unit string, skip ...string) map[string]bool {
		m := map[string]bool{}
	line:
		for _, l := range strings.Split(unit, "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			for _, k := range skip {
				if strings.HasPrefix(l, k+"=") {
					continue line
				}
			}
			m[l] = true
		}
		return m
	}
	skip := []string{"ExecStart", "ConditionFileIsExecutable", "Documentation", "Group"}
	got, want := directives(wantUnit, skip...), directives(string(static), skip...)
	for l := range want {
		if !got[l] {
			t.Errorf("packaging/outpost.service has %q; the installed unit does not", l)
		}
	}
	for l := range got {
		if !want[l] {
			t.Errorf("the installed unit has %q; packaging/outpost.service does not", l)
		}
	}
}

// TestSystemdInstallCycle drives the real kardianos systemd backend (forced,
// since systemd need not be PID 1 here) as a user service under a temporary
// HOME, so it needs no root: the unit it writes is exactly wantUnit, passes
// systemd-analyze verify silently, and install/start/stop/restart/uninstall
// make the expected systemctl calls and status transitions.
func TestSystemdInstallCycle(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("systemd is Linux only")
	}
	t.Setenv(forceSystemdEnv, "1")
	t.Setenv("HOME", t.TempDir())
	userService = true
	t.Cleanup(func() { userService = false })
	unitDir := filepath.Join(os.Getenv("HOME"), ".config/systemd/user")
	log := servicetest.Systemctl(t, unitDir)
	unitFile := filepath.Join(unitDir, "outpost.service")

	status := func(want string) {
		t.Helper()
		if got, err := Status(testConfig); err != nil || got != want {
			t.Fatalf("Status = %q, %v; want %q", got, err, want)
		}
	}
	control := func(action string) {
		t.Helper()
		if err := Control(testConfig, action); err != nil {
			t.Fatalf("%s: %v", action, err)
		}
	}

	status(StatusNotInstalled)
	if err := Control(testConfig, "start"); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("start before install: %v, want ErrNotInstalled", err)
	}
	control("install")
	got, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != wantUnit {
		t.Fatalf("unit:\n%s\nwant:\n%s", got, wantUnit)
	}
	servicetest.VerifyUnit(t, "outpost.service", string(got), testConfig.Executable)
	status(StatusStopped)
	if err := Control(testConfig, "install"); !errors.Is(err, ErrAlreadyInstalled) {
		t.Fatalf("second install: %v, want ErrAlreadyInstalled", err)
	}

	control("start")
	status(StatusRunning)
	control("restart")
	control("uninstall") // running: stopped first
	if _, err := os.Stat(unitFile); !os.IsNotExist(err) {
		t.Fatalf("unit file after uninstall: %v", err)
	}
	status(StatusNotInstalled)
	if err := Control(testConfig, "uninstall"); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("second uninstall: %v, want ErrNotInstalled", err)
	}

	var calls []string // status probes left out
	for _, c := range servicetest.Calls(t, log) {
		if !strings.HasPrefix(c, "is-active") && !strings.HasPrefix(c, "list-unit-files") {
			calls = append(calls, c)
		}
	}
	want := []string{
		"enable --user outpost.service", "daemon-reload --user",
		"start --user outpost.service",
		"restart --user outpost.service",
		"stop --user outpost.service", "disable --user outpost.service", "daemon-reload --user",
	}
	if !reflect.DeepEqual(calls, want) {
		t.Fatalf("systemctl calls:\n%q\nwant:\n%q", calls, want)
	}
}

func TestControlRefusesOtherInitSystems(t *testing.T) {
	swapSystem(t, fakeSystem{name: "unix-systemv", interactive: true})
	if err := Control(testConfig, "install"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("install under sysv: %v, want ErrUnsupported", err)
	}
	if _, err := Status(testConfig); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("status under sysv: %v, want ErrUnsupported", err)
	}
	if err := Control(testConfig, "bogus"); err == nil || !strings.Contains(err.Error(), "unknown action") {
		t.Fatalf("bogus action: %v", err)
	}
}

func TestControlNeedsRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root")
	}
	t.Setenv(forceSystemdEnv, "1")
	if err := Control(testConfig, "install"); !errors.Is(err, ErrNeedsRoot) {
		t.Fatalf("install as non-root: %v, want ErrNeedsRoot", err)
	}
}

func TestUnitRejectsWhatItCannotEscape(t *testing.T) {
	for _, p := range []string{"relative/data", "/var/lib/out post", "/var/lib/100%", "/var/$HOME", "/a\nExecStartPre=/bin/sh"} {
		if _, err := systemdUnit([]string{p}); err == nil {
			t.Errorf("systemdUnit(%q) accepted", p)
		}
	}
	bad := testConfig
	bad.Arguments = []string{"serve", "--config", "/etc/$USER.yaml"}
	if _, err := options(bad); err == nil {
		t.Error("options accepted $ in an argument")
	}
	bad = testConfig
	bad.Name = "out post"
	if _, err := options(bad); err == nil {
		t.Error("options accepted a name with a space")
	}
}

// TestLaunchdOptions checks the inputs Outpost gives kardianos's launchd
// template. The plist itself is rendered only on darwin and is not tested.
func TestLaunchdOptions(t *testing.T) {
	kv, err := options(testConfig)
	if err != nil {
		t.Fatal(err)
	}
	if kv["RunAtLoad"] != true || kv["KeepAlive"] != true || kv["UserService"] != false {
		t.Fatalf("launchd options: %v", kv)
	}
	if !supported("darwin", "darwin-launchd") || supported("linux", "unix-systemv") || !supported("linux", "linux-systemd") {
		t.Fatal("supported() is wrong")
	}
}

func TestRunInteractiveReturnsOnCancel(t *testing.T) {
	swapSystem(t, fakeSystem{name: "linux-systemd", interactive: true})
	if !Interactive() {
		t.Fatal("Interactive() = false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := runWithin(t, func() error {
		return Run(ctx, "outpost", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
}

// The managed tests go through kardianos's real Run (Start, RunWait, Stop)
// of whichever backend this host has, with Interactive forced to false.
func TestRunManagedStopsOnCancel(t *testing.T) {
	swapSystem(t, managed{kservice.ChosenSystem()})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := runWithin(t, func() error {
		return Run(ctx, "outpost", func(ctx context.Context) error { <-ctx.Done(); return nil })
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestRunManagedReturnsRunError(t *testing.T) {
	swapSystem(t, managed{kservice.ChosenSystem()})
	boom := errors.New("listener failed")
	err := runWithin(t, func() error {
		return Run(context.Background(), "outpost", func(context.Context) error { return boom })
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want %v", err, boom)
	}
}

func TestRunManagedStopsOnSIGTERM(t *testing.T) {
	swapSystem(t, managed{kservice.ChosenSystem()})
	// Keep the test process alive if SIGTERM lands before Run's handler.
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGTERM)
	t.Cleanup(func() { signal.Stop(sig) })
	stopped, senderDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(senderDone)
		for {
			select {
			case <-stopped:
				return
			case <-time.After(20 * time.Millisecond):
				syscall.Kill(os.Getpid(), syscall.SIGTERM)
			}
		}
	}()
	err := runWithin(t, func() error {
		return Run(context.Background(), "outpost", func(ctx context.Context) error { <-ctx.Done(); return nil })
	})
	close(stopped)
	<-senderDone // no SIGTERM may arrive after the test's handler is gone
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func runWithin(t *testing.T, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s")
		return nil
	}
}

func swapSystem(t *testing.T, s kservice.System) {
	old := chooseSystem
	chooseSystem = func() kservice.System { return s }
	t.Cleanup(func() { chooseSystem = old })
}

// managed wraps a real backend as if the service manager had started us.
type managed struct{ kservice.System }

func (managed) Interactive() bool { return false }

// fakeSystem is a named platform for the checks that never reach a backend
// (and for the interactive path, which runs the func directly).
type fakeSystem struct {
	name        string
	interactive bool
}

func (f fakeSystem) String() string    { return f.name }
func (f fakeSystem) Detect() bool      { return true }
func (f fakeSystem) Interactive() bool { return f.interactive }
func (f fakeSystem) New(kservice.Interface, *kservice.Config) (kservice.Service, error) {
	return nil, errors.New("fakeSystem has no backend")
}
