package configs

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/bmatcuk/doublestar/v4"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.yaml.in/yaml/v3"
)

// Mirror is one entry of `mirrors:`: repositories of an upstream that are
// synced ahead of time, on a schedule, and kept (pinned).
type Mirror struct {
	Name         string    `yaml:"name"`         // names the job in logs, metrics and `outpost sync --mirror`
	Upstream     string    `yaml:"upstream"`     // a configured upstream's name
	Repositories []string  `yaml:"repositories"` // exact names or globs ("org/**"), globs matched against the catalog
	Tags         TagFilter `yaml:"tags"`         // which tags; all when empty
	Platforms    []string  `yaml:"platforms"`    // children of an index to fetch ("linux/arm64", "linux/arm/v7"); all when empty
	Referrers    bool      `yaml:"referrers"`    // bring signatures and attestations along
	Interval     Duration  `yaml:"interval"`     // between runs, default 6h
	Jitter       Duration  `yaml:"jitter"`       // up to this much is added to each wait at random, default interval/10
	Window       Window    `yaml:"window"`       // daily local-time window for transfers ("01:00-05:00"); always when empty
	Bandwidth    Rate      `yaml:"bandwidth"`    // cap on the job's downloads ("10MiB/s"); 0: none
	RateLimit    RateLimit `yaml:"rateLimit"`    // respect of the upstream's announced pull allowance
	Parallel     int       `yaml:"parallel"`     // blobs downloaded at once, default 3 (within the upstream's maxFills)
}

// RateLimit is how a mirror respects the pull allowance an upstream
// announces (RateLimit-Remaining, as Docker Hub sends it), as regsync's
// ratelimit does: while Min or fewer pulls remain, the job pauses and looks
// again every Retry.
type RateLimit struct {
	Min   int      `yaml:"min"`   // default 10; 0: only when none remain; -1: never pause
	Retry Duration `yaml:"retry"` // default 15m
}

// TagFilter selects tags: a tag must match an include (if any), no exclude
// and the semver range (if set); of those, the newest Latest by semver are
// kept (if set).
type TagFilter struct {
	Include []string `yaml:"include"` // regular expressions
	Exclude []string `yaml:"exclude"` // regular expressions
	Semver  string   `yaml:"semver"`  // a range like ">=1.0.0 <3.0.0"; tags that are not versions do not match
	Latest  int      `yaml:"latest"`  // keep the newest N versions after the other filters
}

// Mirror defaults.
const (
	DefaultMirrorInterval = Duration(6 * time.Hour) // how often a mirror runs
	DefaultRateLimitRetry = Duration(15 * time.Minute)
)

// Window is a daily span of local time, "01:00-05:00"; it may wrap midnight
// ("22:00-04:00"). The zero Window is "always".
type Window struct {
	Start, End int // minutes after midnight; Start == End only in the zero Window
	set        bool
}

// IsZero reports whether w is "always".
func (w Window) IsZero() bool { return !w.set }

// Contains reports whether t (in its own location) lies inside w.
func (w Window) Contains(t time.Time) bool {
	if !w.set {
		return true
	}
	m := t.Hour()*60 + t.Minute()
	if w.Start < w.End {
		return m >= w.Start && m < w.End
	}
	return m >= w.Start || m < w.End
}

// Next returns the first instant at or after t inside w.
func (w Window) Next(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, t.Location())
	start := day.Add(time.Duration(w.Start) * time.Minute)
	if !start.After(t) {
		start = start.AddDate(0, 0, 1)
	}
	return start
}

func (w Window) String() string {
	if !w.set {
		return ""
	}
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.Start/60, w.Start%60, w.End/60, w.End%60)
}

// MarshalText writes "01:00-05:00".
func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalText parses "HH:MM-HH:MM"; "" is "always".
func (w *Window) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*w = Window{}
		return nil
	}
	from, to, ok := strings.Cut(s, "-")
	start, err1 := clock(from)
	end, err2 := clock(to)
	if !ok || err1 != nil || err2 != nil || start == end {
		return fmt.Errorf("%q is not a daily window like 01:00-05:00", s)
	}
	*w = Window{Start: start, End: end, set: true}
	return nil
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", strings.TrimSpace(s))
	if err != nil {
		return 0, err
	}
	return t.Hour()*60 + t.Minute(), nil
}

// UnmarshalYAML reports a bad window like yaml.v3's own type errors.
func (w *Window) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "configs.Window", w.UnmarshalText)
}

// Rate is a number of bytes per second written as "10MiB/s" or "500KB/s".
type Rate int64

func (r Rate) String() string { return Size(r).String() + "/s" }

// MarshalText writes "10MiB/s".
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses "10MiB/s", "1.5MB/s" or a plain number of bytes per
// second.
func (r *Rate) UnmarshalText(b []byte) error {
	var s Size
	if s.UnmarshalText([]byte(strings.TrimSuffix(strings.TrimSpace(string(b)), "/s"))) != nil {
		return fmt.Errorf("%q is not a rate like 10MiB/s", b)
	}
	*r = Rate(s)
	return nil
}

// UnmarshalYAML reports a bad rate like yaml.v3's own type errors.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "configs.Rate", r.UnmarshalText)
}

var mirrorName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// isGlob reports whether a mirror's repository entry is a pattern to match
// against the upstream's catalog rather than one repository (as
// mirror/sync, which cannot import configs, decides it too).
func isGlob(repo string) bool { return strings.ContainsAny(repo, "*?[{") }

// validateMirrors checks the mirrors section; bad collects each problem.
func (c *Config) validateMirrors(bad func(path, format string, args ...any)) {
	upstreams := map[string]bool{}
	for _, u := range c.Upstreams {
		upstreams[canonicalName(u.Name)] = true
	}
	seen := map[string]int{}
	for i, m := range c.Mirrors {
		p := fmt.Sprintf("mirrors[%d]", i)
		if !mirrorName.MatchString(m.Name) {
			bad(p+".name", "%q is not a job name: lower-case letters, digits, '.', '_' and '-', up to 64", m.Name)
		} else if j, dup := seen[m.Name]; dup {
			bad(p+".name", "%q is already the name of mirrors[%d]", m.Name, j)
		} else {
			seen[m.Name] = i
		}
		if !upstreams[canonicalName(m.Upstream)] {
			names := make([]string, 0, len(c.Upstreams))
			for _, u := range c.Upstreams {
				names = append(names, u.Name)
			}
			bad(p+".upstream", "%q is not a configured upstream (have: %s)", m.Upstream, strings.Join(names, ", "))
		}
		if len(m.Repositories) == 0 {
			bad(p+".repositories", "needs at least one repository, like [library/alpine] or [\"org/**\"]")
		}
		for j, r := range m.Repositories {
			rp := fmt.Sprintf("%s.repositories[%d]", p, j)
			if isGlob(r) {
				if !doublestar.ValidatePattern(r) {
					bad(rp, "%q is not a valid pattern", r)
				}
			} else if _, err := name.NewRepository("registry.invalid/"+r, name.StrictValidation); err != nil || r == "" {
				bad(rp, "%q is not a repository name like library/alpine (or a pattern like org/**)", r)
			}
		}
		for _, list := range []struct {
			key  string
			exps []string
		}{{"include", m.Tags.Include}, {"exclude", m.Tags.Exclude}} {
			for j, e := range list.exps {
				if _, err := regexp.Compile(e); err != nil {
					bad(fmt.Sprintf("%s.tags.%s[%d]", p, list.key, j), "%q is not a regular expression: %v", e, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
				}
			}
		}
		if m.Tags.Semver != "" {
			if _, err := semver.NewConstraint(m.Tags.Semver); err != nil {
				bad(p+".tags.semver", "%q is not a version range like '>=1.0.0 <3.0.0': %v", m.Tags.Semver, err)
			}
		}
		if m.Tags.Latest < 0 {
			bad(p+".tags.latest", "%d must not be negative (0 keeps every matching tag)", m.Tags.Latest)
		}
		for j, pl := range m.Platforms {
			if v, err := v1.ParsePlatform(pl); err != nil || v.OS == "" || v.Architecture == "" || strings.Count(pl, "/") < 1 {
				bad(fmt.Sprintf("%s.platforms[%d]", p, j), "%q is not a platform like linux/arm64 or linux/arm/v7", pl)
			}
		}
		if m.Interval < Duration(time.Minute) {
			bad(p+".interval", "%s is too short; give at least 1m (the default is 6h)", m.Interval)
		}
		if m.Jitter < 0 || m.Jitter > m.Interval {
			bad(p+".jitter", "%s must be between 0 and the interval (%s)", m.Jitter, m.Interval)
		}
		if m.Parallel < 0 || m.Parallel > 64 {
			bad(p+".parallel", "%d must be between 1 and 64 (0 means the default, 3)", m.Parallel)
		}
		if m.RateLimit.Min < -1 {
			bad(p+".rateLimit.min", "%d must be -1 (never pause) or more", m.RateLimit.Min)
		}
		if m.RateLimit.Retry < Duration(time.Second) {
			bad(p+".rateLimit.retry", "%s is too short; give at least 1s (the default is 15m)", m.RateLimit.Retry)
		}
		if m.Bandwidth < 0 {
			bad(p+".bandwidth", "must not be negative (0 means no cap)")
		} else if m.Bandwidth > 0 && m.Bandwidth < 1<<10 {
			bad(p+".bandwidth", "%s is too small to make progress; give at least 1KiB/s", m.Bandwidth)
		}
	}
}
