package configs

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// fieldError is one problem with one field; Parse uses Path to add the line.
type fieldError struct {
	Path string // e.g. "upstreams[1].urls[0]"
	Msg  string
	Err  error // underlying OS error, if any, for errors.Is
}

func (e *fieldError) Error() string { return e.Path + ": " + e.Msg }
func (e *fieldError) Unwrap() error { return e.Err }

func fileError(path, file string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the file name is already in the message
	}
	return &fieldError{Path: path, Msg: fmt.Sprintf("cannot read %s: %v", file, err), Err: err}
}

var (
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"auto", "text", "json"}
)

// Validate checks c and returns every problem found, joined with
// errors.Join, each as "path.to.field: what is wrong". It reads (but does not
// keep) caFile, passwordFile and dockerConfig to prove they are usable.
func (c *Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &fieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}

	// Any host, or none (all interfaces), is fine; the port must be numeric.
	checkAddress := func(path, addr string) {
		if _, port, err := net.SplitHostPort(addr); err != nil {
			bad(path, "%q is not host:port (like :5000 or 127.0.0.1:5000)", addr)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			bad(path, "%q has port %q, want a number 0-65535", addr, port)
		}
	}
	checkAddress("http.address", c.HTTP.Address)
	if c.Admin.Address != "" { // empty: no admin listener
		checkAddress("admin.address", c.Admin.Address)
	}
	if c.Storage.Root == "" {
		bad("storage.root", "must not be empty")
	}
	if c.Storage.Reserve != 0 && c.Storage.Reserve < 4<<20 {
		bad("storage.reserve", "%s is too small to keep Badger writable; give at least 4MiB (the default is 64MiB)", c.Storage.Reserve)
	}
	notNegative := func(path string, n int) {
		if n < 0 {
			bad(path, "%d must not be negative (0 means the default)", n)
		}
	}
	notNegativeD := func(path string, d Duration) {
		if d < 0 {
			bad(path, "%s must not be negative (0 means the default)", d)
		}
	}
	notNegative("http.maxConnections", c.HTTP.MaxConnections)
	notNegative("http.maxConnectionsPerIP", c.HTTP.MaxConnectionsPerIP)
	notNegativeD("http.writeTimeout", c.HTTP.WriteTimeout)
	notNegativeD("http.readTimeout", c.HTTP.ReadTimeout)
	notNegativeD("http.idleTimeout", c.HTTP.IdleTimeout)
	notNegative("fills.max", c.Fills.Max)
	notNegative("fills.perUpstream", c.Fills.PerUpstream)
	notNegativeD("fills.queue", c.Fills.Queue)
	notNegativeD("fills.abandonAfter", c.Fills.AbandonAfter)
	notNegativeD("fills.timeout", c.Fills.Timeout)
	if !slices.Contains(logLevels, c.Log.Level) {
		bad("log.level", "%q is not one of %s", c.Log.Level, strings.Join(logLevels, ", "))
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		bad("log.format", "%q is not one of %s", c.Log.Format, strings.Join(logFormats, ", "))
	}

	seen := map[string]int{} // canonical name -> index
	defaultAt := -1          // index of the first default upstream
	for i, u := range c.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)

		if _, err := name.NewRegistry(u.Name, name.StrictValidation); err != nil || u.Name == "" {
			bad(p+".name", "%q is not a registry host like docker.io or registry.local:5001", u.Name)
		} else if u.Name != strings.ToLower(u.Name) {
			bad(p+".name", "%q must be lower case", u.Name)
		} else if j, dup := seen[canonicalName(u.Name)]; dup {
			bad(p+".name", "%q is the same registry as upstreams[%d] (%q)", u.Name, j, c.Upstreams[j].Name)
		} else {
			seen[canonicalName(u.Name)] = i
		}

		if u.Default {
			if defaultAt >= 0 {
				bad(p+".default", "only one upstream can be the default, upstreams[%d] (%s) already is", defaultAt, c.Upstreams[defaultAt].Name)
			} else {
				defaultAt = i
			}
		}

		if len(u.URLs) == 0 {
			bad(p+".urls", "needs at least one URL, like [https://%s]", u.Name)
		}
		for j, raw := range u.URLs {
			if msg := checkURL(raw, u.Insecure); msg != "" {
				bad(fmt.Sprintf("%s.urls[%d]", p, j), "%q %s", raw, msg)
			}
		}

		if u.TagTTL < 0 {
			bad(p+".tagTTL", "%s must not be negative (0 means always revalidate)", u.TagTTL)
		}
		if u.RevalidateTimeout <= 0 {
			bad(p+".revalidateTimeout", "%s must be more than 0, like 2s", u.RevalidateTimeout)
		}
		notNegativeD(p+".requestTimeout", u.RequestTimeout)
		notNegativeD(p+".probeTimeout", u.ProbeTimeout)
		notNegativeD(p+".probeInterval", u.ProbeInterval)
		notNegativeD(p+".downWindow", u.DownWindow)
		notNegativeD(p+".failback", u.Failback)
		notNegative(p+".downAfter", u.DownAfter)
		notNegative(p+".maxFills", u.MaxFills)

		if u.CAFile != "" {
			if b, err := os.ReadFile(u.CAFile); err != nil {
				errs = append(errs, fileError(p+".caFile", u.CAFile, err))
			} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
				bad(p+".caFile", "%s contains no PEM certificate", u.CAFile)
			}
		}

		// Password may also be set directly by Go code, without a file.
		if u.Username != "" && u.PasswordFile == "" && u.Password == "" {
			bad(p+".passwordFile", "is required when username is set")
		}
		if u.PasswordFile != "" {
			if u.Username == "" {
				bad(p+".username", "is required when passwordFile is set")
			}
			if f, err := os.Open(u.PasswordFile); err != nil {
				errs = append(errs, fileError(p+".passwordFile", u.PasswordFile, err))
			} else {
				f.Close()
			}
		}

		if u.DockerConfig != "" {
			if u.Username != "" {
				bad(p+".dockerConfig", "cannot be used together with username; pick one")
			}
			if b, err := os.ReadFile(u.DockerConfig); err != nil {
				errs = append(errs, fileError(p+".dockerConfig", u.DockerConfig, err))
			} else if !json.Valid(b) {
				bad(p+".dockerConfig", "%s is not valid JSON", u.DockerConfig)
			}
		}
	}
	c.validateMirrors(bad)
	return errors.Join(errs...)
}

// canonicalName folds Docker Hub's aliases into one name, so two upstreams
// cannot both claim Docker Hub.
func canonicalName(n string) string { return CanonicalName(n) }

// CanonicalName folds Docker Hub's aliases into "docker.io": the name under
// which the store keeps an upstream's content.
func CanonicalName(n string) string {
	switch n {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return n
}

// checkURL returns what is wrong with an upstream URL, or "".
func checkURL(raw string, insecure bool) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "is not a URL: " + strings.TrimPrefix(err.Error(), fmt.Sprintf("parse %q: ", raw))
	case u.Scheme != "http" && u.Scheme != "https":
		return "must start with http:// or https://"
	case u.Host == "":
		return "has no host"
	case u.User != nil:
		return "must not contain credentials; use username and passwordFile"
	case u.Path != "" && u.Path != "/":
		return "must not have a path; give only scheme://host[:port]"
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "must not have a query or fragment"
	case u.Scheme == "http" && !insecure:
		return "is plain HTTP; set insecure: true on this upstream to allow it"
	}
	return ""
}
