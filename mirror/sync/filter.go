package sync

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/bmatcuk/doublestar/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TagFilter selects the tags of a repository to mirror.
type TagFilter struct {
	include, exclude []*regexp.Regexp
	semver           *semver.Constraints
	latest           int
}

// NewTagFilter compiles a filter: a tag is kept if it matches one of
// include (when there are any), none of exclude, and the semver range
// (when set); of those, only the newest latest by semver (when > 0).
func NewTagFilter(include, exclude []string, semverRange string, latest int) (*TagFilter, error) {
	f := &TagFilter{latest: latest}
	for _, list := range []struct {
		exps []string
		dst  *[]*regexp.Regexp
	}{{include, &f.include}, {exclude, &f.exclude}} {
		for _, e := range list.exps {
			re, err := regexp.Compile(e)
			if err != nil {
				return nil, fmt.Errorf("tag filter %q: %w", e, err)
			}
			*list.dst = append(*list.dst, re)
		}
	}
	if semverRange != "" {
		c, err := semver.NewConstraint(semverRange)
		if err != nil {
			return nil, fmt.Errorf("semver range %q: %w", semverRange, err)
		}
		f.semver = c
	}
	return f, nil
}

// Select returns the kept tags, newest version first when latest or a
// semver range applies, otherwise in the order given.
func (f *TagFilter) Select(tags []string) []string {
	type versioned struct {
		tag string
		v   *semver.Version
	}
	var kept []versioned
	for _, t := range tags {
		if len(f.include) > 0 && !slices.ContainsFunc(f.include, func(re *regexp.Regexp) bool { return re.MatchString(t) }) {
			continue
		}
		if slices.ContainsFunc(f.exclude, func(re *regexp.Regexp) bool { return re.MatchString(t) }) {
			continue
		}
		var v *semver.Version
		if f.semver != nil || f.latest > 0 {
			var err error
			if v, err = semver.NewVersion(t); err != nil {
				continue // not a version: neither in a range nor among the newest
			}
			if f.semver != nil && !f.semver.Check(v) {
				continue
			}
		}
		kept = append(kept, versioned{t, v})
	}
	if f.semver != nil || f.latest > 0 {
		slices.SortStableFunc(kept, func(a, b versioned) int {
			if c := b.v.Compare(a.v); c != 0 {
				return c
			}
			return strings.Compare(a.tag, b.tag) // v1.2 and 1.2.0: one order every run
		})
	}
	if f.latest > 0 && len(kept) > f.latest {
		kept = kept[:f.latest]
	}
	out := make([]string, len(kept))
	for i, k := range kept {
		out[i] = k.tag
	}
	return out
}

// wantPlatform reports whether an index child for p is fetched: every
// child when the filter is empty, otherwise those matching one of want (a
// wanted platform without a variant matches every variant).
func wantPlatform(want []v1.Platform, p *v1.Platform) bool {
	if len(want) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, w := range want {
		if w.OS == p.OS && w.Architecture == p.Architecture && (w.Variant == "" || w.Variant == p.Variant) &&
			(w.OSVersion == "" || w.OSVersion == p.OSVersion) {
			return true
		}
	}
	return false
}

// matchRepositories expands a mirror's repository entries: exact names as
// they are, patterns against the upstream's catalog (in catalog order).
func matchRepositories(entries, catalog []string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(r string) {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	for _, e := range entries {
		if !isGlob(e) {
			add(e)
			continue
		}
		for _, r := range catalog {
			if ok, _ := doublestar.Match(e, r); ok {
				add(r)
			}
		}
	}
	return out
}

func isGlob(s string) bool { return strings.ContainsAny(s, "*?[{") }
