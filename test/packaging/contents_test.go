package packaging

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-oci/outpost/configs"
	"github.com/outpost-oci/outpost/test/testenv"
)

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// TestPackagedConfig: packaging/config.yaml is accepted by the same strict
// loader `outpost serve --config` uses, has the package paths, and knows the
// same upstreams as the embedded default.
func TestPackagedConfig(t *testing.T) {
	path := filepath.Join(testenv.ModuleRoot(t), "packaging", "config.yaml")
	c, err := configs.Load(path)
	if err != nil {
		t.Fatalf("configs.Load(%s): %v", path, err)
	}
	if c.Storage.Root != "/var/lib/outpost" || c.HTTP.Address != ":5000" ||
		c.Admin.Address != "127.0.0.1:9500" || c.Log.Format != "auto" || c.Log.Level != "info" {
		t.Errorf("packaged config: storage.root=%q http.address=%q admin.address=%q log=%s/%s",
			c.Storage.Root, c.HTTP.Address, c.Admin.Address, c.Log.Level, c.Log.Format)
	}
	def := configs.Default()
	if got, want := fmt.Sprint(c.Upstreams), fmt.Sprint(def.Upstreams); got != want {
		t.Errorf("packaged upstreams differ from the embedded default:\n got %s\nwant %s", got, want)
	}
}

// TestPackageContents inspects the four packages with dpkg-deb and rpm: names,
// versions, architectures (metadata and the ELF inside), file lists, owners
// and modes, the conffile / %config(noreplace), the maintainer scripts, and
// the shipped unit and config being the ones in packaging/.
func TestPackageContents(t *testing.T) {
	t.Parallel()
	dpkgDeb := requireTool(t, "dpkg-deb")
	rpmBin := requireTool(t, "rpm")
	rpm2cpio := requireTool(t, "rpm2cpio")
	s := requirePackages(t, v1)
	r := testenv.ModuleRoot(t)
	unit := mustRead(t, filepath.Join(r, "packaging", "outpost.service"))
	scripts := map[string][]byte{
		"postinst": mustRead(t, filepath.Join(r, "packaging", "scripts", "postinstall.sh")),
		"prerm":    mustRead(t, filepath.Join(r, "packaging", "scripts", "preremove.sh")),
		"postrm":   mustRead(t, filepath.Join(r, "packaging", "scripts", "postremove.sh")),
	}
	env := testenv.Env()
	// stdout of a command that must succeed (its stderr is in the failure).
	output := func(t *testing.T, bin string, args ...string) string {
		t.Helper()
		return string(testenv.MustRun(t, time.Minute, env, bin, args...).Stdout)
	}
	rpmdb := t.TempDir() // rpm -qp opens a database: keep it away from $HOME
	for _, a := range pkgArches {
		t.Run("deb-"+a.deb, func(t *testing.T) {
			deb := s.Debs[a.deb]
			fields := output(t, dpkgDeb, "-f", deb, "Package", "Version", "Architecture", "Depends")
			want := fmt.Sprintf("Package: outpost\nVersion: %s-1\nArchitecture: %s\nDepends: passwd\n", s.Version, a.deb)
			if fields != want {
				t.Errorf("dpkg-deb -f:\n%s\nwant:\n%s", fields, want)
			}
			info := output(t, dpkgDeb, "-I", deb)
			for _, w := range []string{"conffiles", "postinst", "prerm", "postrm", "Homepage: https://github.com/outpost-oci/outpost"} {
				if !strings.Contains(info, w) {
					t.Errorf("dpkg-deb -I lacks %q:\n%s", w, info)
				}
			}

			// File list with owners and modes. /var/lib/outpost is not shipped:
			// postinst creates it for the service user.
			list := output(t, dpkgDeb, "-c", deb)
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
				f := strings.Fields(line)
				if len(f) < 6 {
					t.Fatalf("dpkg-deb -c line %q", line)
				}
				got[strings.TrimPrefix(f[len(f)-1], ".")] = f[0] + " " + f[1]
			}
			wantFiles := map[string]string{
				"/usr/bin/outpost":                    "-rwxr-xr-x root/root",
				"/lib/systemd/system/outpost.service": "-rw-r--r-- root/root",
				"/etc/outpost/config.yaml":            "-rw-r----- root/root",
				"/etc/outpost/":                       "drwxr-xr-x root/root",
			}
			for p, w := range wantFiles {
				if got[p] != w {
					t.Errorf("dpkg-deb -c: %s is %q, want %q", p, got[p], w)
				}
			}
			for p, g := range got {
				if !strings.HasSuffix(p, "/") {
					if _, ok := wantFiles[p]; !ok {
						t.Errorf("dpkg-deb -c: unexpected file %s (%s)", p, g)
					}
				}
				if strings.HasPrefix(p, "/var/") {
					t.Errorf("dpkg-deb -c: %s shipped; /var/lib/outpost belongs to postinst", p)
				}
			}

			// Control files: conffiles and the maintainer scripts verbatim.
			ctrl := t.TempDir()
			output(t, dpkgDeb, "-e", deb, ctrl)
			if c := string(mustRead(t, filepath.Join(ctrl, "conffiles"))); c != "/etc/outpost/config.yaml\n" {
				t.Errorf("conffiles = %q, want only /etc/outpost/config.yaml", c)
			}
			for name, want := range scripts {
				p := filepath.Join(ctrl, name)
				if b := mustRead(t, p); !bytes.Equal(b, want) {
					t.Errorf("%s differs from packaging/scripts", name)
				}
				if fi, _ := os.Stat(p); fi.Mode().Perm()&0o111 == 0 {
					t.Errorf("%s is not executable (%v)", name, fi.Mode())
				}
			}

			// Payload: the binary's architecture, the unit and the config.
			x := t.TempDir()
			output(t, dpkgDeb, "-x", deb, x)
			checkPayload(t, x, a.deb, unit, s.Config)
		})

		t.Run("rpm-"+a.rpm, func(t *testing.T) {
			rpm := s.RPMs[a.deb]
			q := func(args ...string) string {
				return output(t, rpmBin, append([]string{"--dbpath", rpmdb}, args...)...)
			}
			if got, want := q("-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{OS}\n", rpm),
				fmt.Sprintf("outpost %s 1 %s linux\n", s.Version, a.rpm); got != want {
				t.Errorf("rpm -qp NVRA = %q, want %q", got, want)
			}
			if got := q("-qpl", rpm); got != "/etc/outpost\n/etc/outpost/config.yaml\n/lib/systemd/system/outpost.service\n/usr/bin/outpost\n" {
				t.Errorf("rpm -qpl:\n%s", got)
			}
			if got := q("-qpc", rpm); got != "/etc/outpost/config.yaml\n" {
				t.Errorf("rpm -qpc = %q, want only /etc/outpost/config.yaml", got)
			}
			// %config(noreplace) is the file flags "cn" (config, noreplace).
			flags := q("-qp", "--qf", "[%{FILENAMES}\t%{FILEFLAGS:fflags}\t%{FILEMODES:perms}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\n]", rpm)
			wantFlags := map[string]string{
				"/etc/outpost":                        "\tdrwxr-xr-x\troot:root",
				"/etc/outpost/config.yaml":            "cn\t-rw-r-----\troot:root",
				"/lib/systemd/system/outpost.service": "\t-rw-r--r--\troot:root",
				"/usr/bin/outpost":                    "\t-rwxr-xr-x\troot:root",
			}
			for _, line := range strings.Split(strings.TrimSpace(flags), "\n") {
				p, rest, _ := strings.Cut(line, "\t")
				if wantFlags[p] != rest {
					t.Errorf("rpm file %s: flags/mode/owner %q, want %q", p, rest, wantFlags[p])
				}
			}
			if got := q("-qpR", rpm); !strings.Contains(got, "shadow-utils") {
				t.Errorf("rpm -qpR lacks shadow-utils:\n%s", got)
			}
			sc := q("-qp", "--scripts", rpm)
			for _, w := range []string{
				"postinstall scriptlet (using /bin/sh):", "preuninstall scriptlet (using /bin/sh):",
				"postuninstall scriptlet (using /bin/sh):",
			} {
				if !strings.Contains(sc, w) {
					t.Errorf("rpm --scripts lacks %q:\n%s", w, sc)
				}
			}
			for name, body := range scripts {
				if !strings.Contains(sc, strings.TrimSpace(string(body))) {
					t.Errorf("rpm --scripts does not contain packaging/scripts for %s", name)
				}
			}
			if out := q("-K", "--nosignature", rpm); !strings.Contains(out, "digests OK") {
				t.Errorf("rpm -K: %s", out)
			}

			// Payload via rpm2cpio (newc cpio, read here: no cpio needed).
			// Debian's rpm2cpio 4.18 exits 1 on these packages although it
			// writes the whole archive and says nothing; the archive is
			// trusted only if it is complete (trailer) and rpm -K passed.
			res := testenv.Run(time.Minute, env, rpm2cpio, rpm)
			if res.Err != nil && (len(res.Stderr) != 0 || len(res.Stdout) == 0) {
				t.Fatalf("rpm2cpio: %v\n%s", res.Err, res.Stderr)
			}
			x := t.TempDir()
			if err := extractNewc(bytes.NewReader(res.Stdout), x); err != nil {
				t.Fatalf("rpm payload: %v", err)
			}
			checkPayload(t, x, a.deb, unit, s.Config)
		})
	}
}

// checkPayload checks the files unpacked from a package into dir.
func checkPayload(t *testing.T, dir, arch string, unit, config []byte) {
	t.Helper()
	m, static := elfInfo(t, filepath.Join(dir, "usr/bin/outpost"))
	if m != elfMachine[arch] || !static {
		t.Errorf("/usr/bin/outpost: machine %v static=%v, want %v static", m, static, elfMachine[arch])
	}
	if b := mustRead(t, filepath.Join(dir, "lib/systemd/system/outpost.service")); !bytes.Equal(b, unit) {
		t.Errorf("packaged unit differs from packaging/outpost.service")
	}
	if b := mustRead(t, filepath.Join(dir, "etc/outpost/config.yaml")); !bytes.Equal(b, config) {
		t.Errorf("packaged config differs from the config it was built with")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// extractNewc unpacks regular files and directories of a "newc" cpio
// archive (what rpm2cpio writes) below dir.
func extractNewc(r io.Reader, dir string) error {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		off += n
		return b, err
	}
	pad := func() error {
		if p := (4 - off%4) % 4; p > 0 {
			_, err := read(p)
			return err
		}
		return nil
	}
	var names []string
	for {
		h, err := read(110)
		if err != nil {
			return fmt.Errorf("header at %d: %w", off, err)
		}
		if string(h[:6]) != "070701" && string(h[:6]) != "070702" {
			return fmt.Errorf("bad cpio magic %q at %d", h[:6], off-110)
		}
		field := func(i int) int64 {
			v, _ := strconv.ParseInt(string(h[6+8*i:14+8*i]), 16, 64)
			return v
		}
		mode, size, namesize := field(1), field(6), field(11)
		nb, err := read(namesize)
		if err != nil {
			return err
		}
		name := strings.TrimRight(string(nb), "\x00")
		if err := pad(); err != nil {
			return err
		}
		data, err := read(size)
		if err != nil {
			return err
		}
		if err := pad(); err != nil {
			return err
		}
		if name == "TRAILER!!!" {
			break
		}
		clean := filepath.Join(dir, filepath.Clean("/"+name))
		switch mode & 0o170000 {
		case 0o040000:
			if err := os.MkdirAll(clean, 0o755); err != nil {
				return err
			}
		case 0o100000:
			if err := os.MkdirAll(filepath.Dir(clean), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(clean, data, os.FileMode(mode&0o777)); err != nil {
				return err
			}
		}
		names = append(names, name)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return fmt.Errorf("empty archive")
	}
	return nil
}
