package packaging

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/test/testenv"
)

// verifyUnit runs `systemd-analyze verify` (the binary analyze) on the unit
// at unitPath (absolute inside stage) with --root=stage, in a private mount
// namespace with a tmpfs on /run (systemd-analyze writes
// /run/systemd/systemd-units-load otherwise), and returns all it printed.
func verifyUnit(unshare, analyze, stage, unitPath string) (string, error) {
	res := testenv.Run(2*time.Minute, testenv.Env(), unshare, "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs -o mode=0755 tmpfs /run && exec "$1" verify --root="$2" "$3"`,
		"sh", analyze, stage, unitPath)
	return string(res.Stdout) + string(res.Stderr), res.Err
}

// TestSystemdUnitVerify unpacks the amd64 .deb into a stage root, adds the
// host's system units (sysinit.target etc.) and /bin/kill (ExecReload=), and
// requires `systemd-analyze verify` to print nothing at all: an unknown key
// is only a warning with exit code 0, so any output fails. A deliberately
// broken copy must produce output, which shows the check is not vacuous. The
// unit is also checked for the hardening the issue asks for.
func TestSystemdUnitVerify(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t) // unshare -m and mount
	analyze := requireTool(t, "systemd-analyze")
	unshare := requireTool(t, "unshare")
	dpkgDeb := requireTool(t, "dpkg-deb")
	s := requirePackages(t, v1)

	stage := t.TempDir()
	env := testenv.Env()
	testenv.MustRun(t, time.Minute, env, dpkgDeb, "-x", s.Debs["amd64"], stage)
	testenv.MustRun(t, time.Minute, env, "cp", "-an", "/lib/systemd/system/.", filepath.Join(stage, "lib/systemd/system")+"/")
	kill, err := filepath.EvalSymlinks("/bin/kill")
	if err != nil {
		testenv.Missing(t, "/bin/kill: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(stage, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	testenv.MustRun(t, time.Minute, env, "cp", kill, filepath.Join(stage, "bin/kill"))

	const unit = "/lib/systemd/system/outpost.service"
	out, err := verifyUnit(unshare, analyze, stage, unit)
	if err != nil || out != "" {
		t.Errorf("systemd-analyze verify %s: err=%v, output (must be empty):\n%s", unit, err, out)
	}

	// Negative control: the same check sees an unknown key (rc 0, a warning).
	body := mustRead(t, filepath.Join(stage, unit))
	broken := bytes.Replace(body, []byte("LimitNOFILE=65536"), []byte("LimitNOFILES=65536"), 1)
	const brokenUnit = "/lib/systemd/system/outpost-broken.service"
	if err := os.WriteFile(filepath.Join(stage, brokenUnit), broken, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _ := verifyUnit(unshare, analyze, stage, brokenUnit); !strings.Contains(out, "LimitNOFILES") {
		t.Errorf("negative control: verify of a unit with an unknown key printed %q", out)
	}

	// Required directives (exact values).
	got := parseUnit(t, body)
	want := map[string]string{
		"Unit.After":                      "network-online.target",
		"Unit.Wants":                      "network-online.target",
		"Service.User":                    "outpost",
		"Service.Group":                   "outpost",
		"Service.ExecStart":               "/usr/bin/outpost serve --config /etc/outpost/config.yaml",
		"Service.ExecReload":              "/bin/kill -HUP $MAINPID",
		"Service.Restart":                 "on-failure",
		"Service.LimitNOFILE":             "65536",
		"Service.NoNewPrivileges":         "yes",
		"Service.ProtectSystem":           "strict",
		"Service.ReadWritePaths":          "/var/lib/outpost",
		"Service.PrivateTmp":              "yes",
		"Service.ProtectHome":             "yes",
		"Service.ProtectKernelTunables":   "yes",
		"Service.ProtectKernelModules":    "yes",
		"Service.ProtectControlGroups":    "yes",
		"Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"Service.LockPersonality":         "yes",
		"Service.MemoryDenyWriteExecute":  "yes",
		"Service.RestrictRealtime":        "yes",
		"Service.RestrictNamespaces":      "yes",
		"Service.SystemCallArchitectures": "native",
		"Service.CapabilityBoundingSet":   "",
		"Service.AmbientCapabilities":     "",
		"Install.WantedBy":                "multi-user.target",
	}
	for k, w := range want {
		v, ok := got[k]
		if !ok || len(v) != 1 || v[0] != w {
			t.Errorf("unit %s = %q, want exactly %q", k, v, w)
		}
	}
	if v := got["Service.TimeoutStopSec"]; len(v) != 1 || v[0] == "" {
		t.Errorf("unit has no TimeoutStopSec=")
	}
}

// parseUnit reads a systemd unit into "Section.Key" -> values.
func parseUnit(t *testing.T, b []byte) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("unit line %q", line)
		}
		key := section + "." + strings.TrimSpace(k)
		m[key] = append(m[key], strings.TrimSpace(v))
	}
	return m
}
