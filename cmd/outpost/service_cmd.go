package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/service"
	"github.com/urfave/cli/v2"
)

// The installed daemon. On Linux it is the systemd unit outpost.service; on
// macOS the launchd daemon /Library/LaunchDaemons/outpost.plist (label
// "outpost"). Both run "<this binary> serve --config <abs FILE>" as the
// unprivileged user given by --user, which must already exist (the .deb and
// .rpm create it; for a bare binary, create it by hand).
const (
	serviceName        = "outpost"
	serviceDescription = "Outpost OCI image pull-through cache"
	serviceUser        = "outpost"
)

// defaultServiceConfig is where "service install" looks without --config:
// /etc/outpost on Linux (where the packages put it), /usr/local/etc/outpost
// on macOS (the usual place for software outside the OS, Homebrew's prefix
// on Intel Macs; it exists whether or not Homebrew is installed).
func defaultServiceConfig() string {
	if runtime.GOOS == "darwin" {
		return "/usr/local/etc/outpost/config.yaml"
	}
	return "/etc/outpost/config.yaml"
}

// lookupUser is user.Lookup; tests replace it because the service user
// does not exist on a build machine.
var lookupUser = user.Lookup

func serviceCommand() *cli.Command {
	control := func(action, usage, done string) *cli.Command {
		return &cli.Command{
			Name:  action,
			Usage: usage,
			Action: func(c *cli.Context) error {
				if err := service.Control(service.Config{Name: serviceName, Description: serviceDescription}, action); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "%s %s\n", done, serviceName)
				return nil
			},
		}
	}
	return &cli.Command{
		Name:  "service",
		Usage: "install and control Outpost as a system service (systemd on Linux, launchd on macOS)",
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return fmt.Errorf("unknown service command %q; want install, uninstall, start, stop, restart or status", c.Args().First())
			}
			return cli.ShowSubcommandHelp(c)
		},
		Subcommands: []*cli.Command{
			{
				Name:  "install",
				Usage: "install the service (not started; run \"outpost service start\")",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: defaultServiceConfig(), EnvVars: []string{"OUTPOST_CONFIG"},
						Usage: "config `FILE` the service runs with; its storage.root becomes the only writable path"},
					&cli.StringFlag{Name: "user", Value: serviceUser, Usage: "existing unprivileged `USER` the service runs as"},
				},
				Action: func(c *cli.Context) error {
					return installService(c.App.Writer, c.App.ErrWriter, c.String("config"), c.String("user"))
				},
			},
			control("uninstall", "stop and remove the service", "uninstalled"),
			control("start", "start the service", "started"),
			control("stop", "stop the service", "stopped"),
			control("restart", "restart the service", "restarted"),
			{
				Name:  "status",
				Usage: "print running, stopped, failed or not installed",
				Action: func(c *cli.Context) error {
					st, err := service.Status(service.Config{Name: serviceName, Description: serviceDescription})
					if err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, st)
					return nil
				},
			},
		},
	}
}

// installService checks everything the daemon will need before installing
// it, so a mistake is reported now rather than as a unit that fails to start.
func installService(stdout, stderr io.Writer, configPath, userName string) error {
	configPath, err := filepath.Abs(configPath)
	if err != nil {
		return err
	}
	cfg, err := configs.Load(configPath)
	if err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	root := cfg.Storage.Root
	if !filepath.IsAbs(root) {
		// The daemon runs from /, and the unit can only grant write access
		// to a known absolute path.
		return fmt.Errorf("service install: %s: storage.root %q is relative; the service needs an absolute path such as %s",
			configPath, root, defaultServiceRoot())
	}
	root = filepath.Clean(root)
	u, err := lookupUser(userName)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return fmt.Errorf("service install: user %q does not exist: %s, or pass --user", userName, createUserHint(userName))
		}
		return fmt.Errorf("service install: %w", err)
	}
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return fmt.Errorf("service install: cannot find this program's path: %w", err)
	}
	if runtime.GOOS == "linux" {
		for _, p := range []string{configPath, root} {
			if hiddenFromUnit(p) {
				fmt.Fprintf(stderr, "warning: %s is under a directory the hardened unit hides (ProtectHome=yes, PrivateTmp=yes); the service will not see it\n", p)
			}
		}
	}

	svc := service.Config{
		Name:           serviceName,
		Description:    serviceDescription,
		UserName:       u.Username,
		Executable:     exe,
		Arguments:      []string{"serve", "--config", configPath},
		ReadWritePaths: []string{root},
		// The storage root, as in the packaged unit, so a relative path in
		// the config cannot land anywhere else.
		WorkingDirectory: root,
	}
	if err := service.Control(svc, "install"); err != nil {
		return err
	}
	// ProtectSystem=strict stops the daemon from creating its storage root
	// itself, and systemd refuses to start a unit whose ReadWritePaths is
	// missing.
	if err := ensureOwnedDir(root, u); err != nil {
		return fmt.Errorf("service installed, but %w", err)
	}
	fmt.Fprintf(stdout, "installed %s (%s): %s serve --config %s, as user %s, writing to %s\nstart it with: outpost service start\n",
		serviceName, service.Platform(), exe, configPath, u.Username, root)
	return nil
}

// ensureOwnedDir creates dir for u if it is missing; an existing directory
// (e.g. made by the .deb) is left as it is.
func ensureOwnedDir(dir string, u *user.User) error {
	if _, err := os.Stat(dir); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return fmt.Errorf("uid of %s: %w", u.Username, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return fmt.Errorf("gid of %s: %w", u.Username, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("creating storage root: %w", err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("storage root %s: %w", dir, err)
	}
	return nil
}

func hiddenFromUnit(p string) bool {
	for _, d := range []string{"/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/"} {
		if strings.HasPrefix(p+"/", d) {
			return true
		}
	}
	return false
}

func defaultServiceRoot() string {
	if runtime.GOOS == "darwin" {
		return "/usr/local/var/outpost"
	}
	return "/var/lib/outpost"
}

func createUserHint(name string) string {
	if runtime.GOOS == "darwin" {
		return "create a hidden system account first (see sysadminctl or dscl)"
	}
	return "create it first: useradd --system --home-dir /var/lib/outpost --shell /usr/sbin/nologin " + name
}
