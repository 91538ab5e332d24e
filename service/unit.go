package service

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	kservice "github.com/kardianos/service"
)

// options are the kardianos options for both platforms; each backend reads
// only its own keys.
func options(cfg Config) (kservice.KeyValue, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	unit, err := systemdUnit(cfg.ReadWritePaths)
	if err != nil {
		return nil, err
	}
	return kservice.KeyValue{
		"SystemdScript": unit,
		"UserService":   userService,
		// launchd: start at boot (kardianos defaults to false) and restart
		// whenever it exits, the nearest to Restart=on-failure.
		"RunAtLoad": true,
		"KeepAlive": true,
	}, nil
}

// systemdUnit returns the unit template: the packages' static unit
// (packaging/outpost.service, kept in step by TestUnitMatchesPackagedUnit)
// with the executable, arguments, user, working directory and writable
// paths filled in. Group= is left out: systemd then uses the user's group. kardianos v1.3.0
// renders it with its own small engine: keys are {{Path}}, not {{.Path}},
// and only the keys its built-in systemdScript uses exist, so the writable
// paths are written into the template text here.
func systemdUnit(readWrite []string) (string, error) {
	rw := ""
	if len(readWrite) > 0 {
		for _, p := range readWrite {
			if !filepath.IsAbs(p) || strings.ContainsAny(p, " \t") {
				return "", fmt.Errorf("writable path %q: must be absolute and contain no whitespace", p)
			}
			if err := checkUnitText(p); err != nil {
				return "", fmt.Errorf("writable path %q: %w", p, err)
			}
		}
		rw = "ReadWritePaths=" + strings.Join(readWrite, " ") + "\n"
	}
	return `[Unit]
Description={{Description}}
ConditionFileIsExecutable={{Path | cmdEscape}}
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=simple
{{if UserName}}User={{UserName}}
{{end}}ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
TimeoutStartSec=30s
TimeoutStopSec=30s
LimitNOFILE=65536
{{if WorkingDirectory}}WorkingDirectory={{WorkingDirectory | cmdEscape}}
{{end}}UMask=0027

NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
` + rw + `PrivateTmp=yes
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
`, nil
}

func validate(cfg Config) error {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, " /\\\t\n") {
		return fmt.Errorf("service name %q: must be non-empty with no spaces or slashes", cfg.Name)
	}
	if cfg.WorkingDirectory != "" && !filepath.IsAbs(cfg.WorkingDirectory) {
		return fmt.Errorf("working directory %q: must be absolute", cfg.WorkingDirectory)
	}
	for _, s := range append([]string{cfg.Description, cfg.UserName, cfg.Executable, cfg.WorkingDirectory}, cfg.Arguments...) {
		if err := checkUnitText(s); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	return nil
}

// checkUnitText rejects what the templates do not escape: systemd expands
// % specifiers and $VARIABLES in ExecStart even inside quotes, kardianos
// quotes arguments without escaping backslashes, a newline would start a
// new directive, and {{ would be read by the template engine.
func checkUnitText(s string) error {
	if strings.ContainsAny(s, "%$\\\"'\n\r") || strings.Contains(s, "{{") {
		return errors.New(`contains one of % $ \ " ' {{ or a newline, which the service file cannot carry`)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return errors.New("contains a control character")
		}
	}
	return nil
}
