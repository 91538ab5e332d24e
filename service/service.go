// Package service runs a program under the host's service manager (systemd on
// Linux, launchd on macOS) and installs, controls and removes it there. It is
// a thin wrapper over github.com/kardianos/service and imports nothing from
// Outpost: the caller decides the name, the command line and the paths.
//
// Only systemd and launchd are supported. kardianos would fall back to SysV,
// upstart or OpenRC scripts, but those carry none of the hardening in the
// systemd unit, so Control and Status refuse them (ErrUnsupported) and the
// caller is told to run "outpost serve" under its own init system.
package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	kservice "github.com/kardianos/service"
)

// Config describes the installed daemon.
type Config struct {
	Name        string   // systemd unit name without ".service"; launchd label and plist name
	Description string   // one line
	UserName    string   // the unprivileged account the daemon runs as; it must exist
	Executable  string   // the program to run; empty means this process's executable
	Arguments   []string // e.g. serve --config /etc/outpost/config.yaml

	WorkingDirectory string // absolute; empty leaves the manager's default (/)

	// ReadWritePaths are the only paths the daemon may write under the
	// unit's ProtectSystem=strict (Outpost's storage root). Absolute, no
	// whitespace. launchd has no equivalent and ignores them.
	ReadWritePaths []string
}

// Status values printed by "outpost service status".
const (
	StatusRunning      = "running"
	StatusStopped      = "stopped"
	StatusFailed       = "failed" // systemd: the last run failed and it gave up restarting
	StatusNotInstalled = "not installed"
)

// Actions accepted by Control.
var Actions = []string{"install", "uninstall", "start", "stop", "restart"}

var (
	ErrNotInstalled     = errors.New("the service is not installed")
	ErrAlreadyInstalled = errors.New("the service is already installed (uninstall it first)")
	ErrNeedsRoot        = errors.New("needs root (try sudo)")
	ErrUnsupported      = errors.New("only systemd (Linux) and launchd (macOS) are supported")
)

// Test hooks. forceSystemdEnv makes every call use kardianos's systemd
// backend even where systemd is not PID 1 (as on the build machine), so
// tests can install into a sandbox; it is read per call, not at init.
// userService (package tests only) installs under $HOME/.config/systemd/user
// so no root and no namespace are needed.
const forceSystemdEnv = "OUTPOST_SERVICE_FORCE_SYSTEMD"

var (
	userService  bool
	chooseSystem = defaultSystem
)

// forcedSystem is a kardianos System that always reports itself available.
type forcedSystem struct{ kservice.System }

func (forcedSystem) Detect() bool { return true }

func defaultSystem() kservice.System {
	if os.Getenv(forceSystemdEnv) != "" {
		for _, s := range kservice.AvailableSystems() {
			if s.String() == "linux-systemd" {
				return forcedSystem{s}
			}
		}
	}
	return kservice.ChosenSystem()
}

// Interactive reports whether this process was started from a terminal or a
// script rather than by the service manager (cmd uses it to pick JSON logs).
func Interactive() bool {
	sys := chooseSystem()
	return sys == nil || sys.Interactive()
}

// Run calls run. Started by the service manager, it also answers the
// manager's stop (SIGTERM) by cancelling run's context, and returns only once
// run has returned; run returning on its own ends the service too, so a
// failure exits the process and systemd's Restart=on-failure applies.
// Started interactively, it is just run(ctx): the caller handles signals.
func Run(ctx context.Context, name string, run func(context.Context) error) error {
	sys := chooseSystem()
	if sys == nil || sys.Interactive() {
		return run(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &program{ctx: ctx, cancel: cancel, run: run, done: make(chan struct{})}
	s, err := sys.New(p, &kservice.Config{Name: name, Option: kservice.KeyValue{"RunWait": p.wait}})
	if err != nil {
		return err
	}
	if err := s.Run(); err != nil {
		return err
	}
	return p.err
}

// program adapts run to kardianos's Start/Stop interface.
type program struct {
	ctx    context.Context
	cancel context.CancelFunc
	run    func(context.Context) error
	done   chan struct{}
	err    error // set before done is closed
}

func (p *program) Start(kservice.Service) error {
	go func() {
		p.err = p.run(p.ctx)
		close(p.done)
	}()
	return nil
}

func (p *program) Stop(kservice.Service) error {
	p.cancel()
	<-p.done // the unit's TimeoutStopSec bounds this
	return nil
}

// wait replaces kardianos's default RunWait, which waits for a signal only
// and would hang forever if run returned by itself.
func (p *program) wait() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sig)
	select {
	case <-sig:
	case <-p.ctx.Done():
	case <-p.done:
	}
}

// Control performs one of Actions. It checks what it can first so the error
// is clear: the platform, root, and whether the service is installed
// (kardianos itself reports only "exit status 1" from systemctl).
func Control(cfg Config, action string) error {
	if !validAction(action) {
		return fmt.Errorf("unknown action %q (want one of %v)", action, Actions)
	}
	s, err := newService(cfg)
	if err != nil {
		return err
	}
	if !userService && os.Geteuid() != 0 {
		return fmt.Errorf("%s: %w", action, ErrNeedsRoot)
	}
	st, err := s.Status()
	switch {
	case action == "install" && (err == nil || isFailedState(err)):
		return fmt.Errorf("%s: %w", cfg.Name, ErrAlreadyInstalled)
	case action != "install" && errors.Is(err, kservice.ErrNotInstalled):
		return fmt.Errorf("%s: %w", cfg.Name, ErrNotInstalled)
	}
	if action == "uninstall" && st == kservice.StatusRunning {
		// systemd's uninstall only disables the unit; stop it so no
		// process is left running without a unit file.
		if err := s.Stop(); err != nil {
			return fmt.Errorf("uninstall: stop %s: %w", cfg.Name, err)
		}
	}
	if err := kservice.Control(s, action); err != nil {
		// kardianos discards systemctl's stderr, so point at the logs.
		return fmt.Errorf("%w (see %s)", err, logHint(runtime.GOOS, cfg.Name))
	}
	return nil
}

func logHint(goos, name string) string {
	if goos == "darwin" {
		return "/var/log/" + name + ".err.log and launchctl print system/" + name
	}
	return "systemctl status " + name + " and journalctl -u " + name
}

// Status returns one of the Status constants.
func Status(cfg Config) (string, error) {
	s, err := newService(cfg)
	if err != nil {
		return "", err
	}
	st, err := s.Status()
	switch {
	case errors.Is(err, kservice.ErrNotInstalled):
		return StatusNotInstalled, nil
	case isFailedState(err):
		return StatusFailed, nil
	case err != nil:
		return "", fmt.Errorf("status of %s: %w", cfg.Name, err)
	case st == kservice.StatusRunning:
		return StatusRunning, nil
	case st == kservice.StatusStopped:
		return StatusStopped, nil
	}
	return "", fmt.Errorf("status of %s: unknown", cfg.Name)
}

// Platform names the service manager in use, e.g. "linux-systemd".
func Platform() string {
	if sys := chooseSystem(); sys != nil {
		return sys.String()
	}
	return "none"
}

func newService(cfg Config) (kservice.Service, error) {
	sys := chooseSystem()
	if sys == nil || !supported(runtime.GOOS, sys.String()) {
		return nil, fmt.Errorf("%w; this host's service manager is %s: run %q under it yourself", ErrUnsupported, Platform(), "outpost serve")
	}
	opts, err := options(cfg)
	if err != nil {
		return nil, err
	}
	return sys.New(nopProgram{}, &kservice.Config{
		Name:        cfg.Name,
		Description: cfg.Description,
		UserName:    cfg.UserName,
		Executable:  cfg.Executable,
		Arguments:   cfg.Arguments,
		Option:      opts,

		WorkingDirectory: cfg.WorkingDirectory,
	})
}

func supported(goos, platform string) bool {
	return goos == "linux" && platform == "linux-systemd" || goos == "darwin" && platform == "darwin-launchd"
}

// isFailedState matches the one error kardianos's systemd Status returns for
// an installed unit in the failed state; it has no sentinel for it.
func isFailedState(err error) bool {
	return err != nil && err.Error() == "service in failed state"
}

func validAction(a string) bool {
	for _, v := range Actions {
		if a == v {
			return true
		}
	}
	return false
}

// nopProgram is the Interface for control calls, which never run anything.
type nopProgram struct{}

func (nopProgram) Start(kservice.Service) error { return nil }
func (nopProgram) Stop(kservice.Service) error  { return nil }
