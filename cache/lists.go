package cache

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/singleflight"
)

// catalog lists cached repositories under their canonical names
// (docker.io/library/alpine), which clients can pull by path prefix.
func (c *Cache) catalog(ctx *fasthttp.RequestCtx) error {
	repos, err := c.store.Repositories()
	if err != nil {
		return err
	}
	page, err := paginate(ctx, repos)
	if err != nil {
		return err
	}
	return writeJSON(ctx, struct {
		Repositories []string `json:"repositories"`
	}{page})
}

// Upstream lists (tags, referrers) are kept briefly, so that a burst of
// requests is one upstream request, and waited for at most listWait: a
// slow answer is kept for the next request, and this one is answered from
// what the cache holds.
const (
	listTTL        = 30 * time.Second
	listWait       = 5 * time.Second
	maxListEntries = 256
	maxListItems   = 200_000 // tags and descriptors kept in all
)

type listCache struct {
	mu      sync.Mutex
	entries map[string]listEntry
	items   int
	group   singleflight.Group
}

type listEntry struct {
	val   any
	items int
	at    time.Time
}

func (l *listCache) init() { l.entries = map[string]listEntry{} }

func (l *listCache) get(key string, ttl time.Duration, now time.Time) (any, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	if !ok || now.Sub(e.at) >= ttl || now.Before(e.at) {
		return nil, false
	}
	return e.val, true
}

func (l *listCache) put(key string, val any, items int, now time.Time) {
	if items > maxListItems {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.entries[key]; ok {
		l.items -= old.items
		delete(l.entries, key)
	}
	for len(l.entries) >= maxListEntries || l.items+items > maxListItems {
		oldest := ""
		for k, e := range l.entries {
			if oldest == "" || e.at.Before(l.entries[oldest].at) {
				oldest = k
			}
		}
		l.items -= l.entries[oldest].items
		delete(l.entries, oldest)
	}
	l.entries[key] = listEntry{val: val, items: items, at: now}
	l.items += items
}

// upstreamList returns fetch's answer, from the list cache if fresh: kept
// for listTTL, or the upstream's tagTTL if shorter (an upstream whose tags
// are always revalidated has its lists always asked for too).
func (c *Cache) upstreamList(up *upstream, key string, fetch func() (any, int, error)) (any, error) {
	if v, ok := c.lists.get(key, min(listTTL, up.tagTTL), c.now()); ok {
		return v, nil
	}
	ch := c.lists.group.DoChan(key, func() (any, error) {
		if !c.track() {
			return nil, errShuttingDown
		}
		defer c.work.Done()
		v, n, err := fetch()
		if err == nil {
			c.lists.put(key, v, n, c.now())
		}
		return v, err
	})
	timer := time.NewTimer(listWait)
	defer timer.Stop()
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-timer.C:
		return nil, notCachedOffline(transport.NameUnknownErrorCode, "upstream is slow to answer")
	}
}

// tags lists a repository's tags: upstream's merged with the cached ones
// when upstream answers, the cached ones when it does not.
func (c *Cache) tags(ctx *fasthttp.RequestCtx, r route) error {
	tags, err := c.store.Tags(r.key)
	if err != nil {
		return err
	}
	known := len(tags) > 0 || c.store.HasRepository(r.key)
	if lister, ok := r.up.Upstream.(tagLister); ok && !r.up.Down() {
		remote, err := c.upstreamList(r.up, "tags "+r.key, func() (any, int, error) {
			t, err := lister.Tags(c.ctx, r.repo)
			return t, len(t), err
		})
		switch {
		case err == nil:
			tags, known = union(tags, remote.([]string)), true
		case !known:
			return toRegError(err, transport.NameUnknownErrorCode)
		default:
			c.log.Warn("serving cached tag list", "repo", r.key, "err", err)
		}
	}
	if !known {
		return newError(http.StatusNotFound, transport.NameUnknownErrorCode, "repository %q is not cached", r.name)
	}
	page, err := paginate(ctx, tags)
	if err != nil {
		return err
	}
	return writeJSON(ctx, struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{r.name, page})
}

// union merges two tag lists into one sorted list without duplicates.
func union(a, b []string) []string {
	all := append(append([]string{}, a...), b...)
	sort.Strings(all)
	return slices.Compact(all)
}

// paginate applies the spec's n and last parameters to a sorted list and
// sets the Link header when more remain.
func paginate(ctx *fasthttp.RequestCtx, all []string) ([]string, error) {
	args := ctx.QueryArgs()
	if last := string(args.Peek("last")); last != "" {
		all = all[sort.Search(len(all), func(i int) bool { return all[i] > last }):]
	}
	page := all
	if nArg := args.Peek("n"); len(nArg) > 0 {
		n, err := strconv.Atoi(string(nArg))
		if err != nil || n < 0 {
			return nil, newError(http.StatusBadRequest, transport.UnsupportedErrorCode, "invalid n %q", nArg)
		}
		if n < len(all) {
			page = all[:n]
			if n > 0 {
				// The next page keeps the request's other parameters (ns=).
				var next fasthttp.Args
				args.CopyTo(&next)
				next.Set("n", strconv.Itoa(n))
				next.Set("last", page[n-1])
				ctx.Response.Header.Set("Link", "<"+string(ctx.Path())+"?"+next.String()+`>; rel="next"`)
			}
		}
	}
	if page == nil {
		page = []string{}
	}
	return page, nil
}

// referrers answers the referrers API: what upstream knows (through its
// referrers API, or its tag schema where it has none), merged with the
// referrers the cache holds (all that is known offline). Like any registry
// that implements the API, it never answers 404: nothing known is an empty
// index, which tells cosign, notation, oras and regclient not to look any
// further.
func (c *Cache) referrers(ctx *fasthttp.RequestCtx, r route) error {
	d, _ := v1.NewHash(r.ref)
	descs, err := c.store.Referrers(r.key, d)
	if err != nil {
		return err
	}
	descs = c.cachedTagSchema(r, d, descs)
	if lister, ok := r.up.Upstream.(referrerLister); ok && !r.up.Down() {
		remote, err := c.upstreamList(r.up, "referrers "+r.key+"@"+d.String(), func() (any, int, error) {
			descs, err := lister.Referrers(c.ctx, r.repo, d)
			return descs, len(descs), err
		})
		if err != nil {
			c.log.Warn("serving cached referrers", "repo", r.key, "err", err)
		} else {
			descs = mergeDescriptors(descs, remote.([]v1.Descriptor))
		}
	}
	if want := string(ctx.QueryArgs().Peek("artifactType")); want != "" {
		kept := descs[:0]
		for _, desc := range descs {
			if desc.ArtifactType == want {
				kept = append(kept, desc)
			}
		}
		descs = kept
		ctx.Response.Header.Set("OCI-Filters-Applied", "artifactType")
	}
	if descs == nil {
		descs = []v1.Descriptor{}
	}
	if err := writeJSON(ctx, v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: descs}); err != nil {
		return err
	}
	ctx.SetContentType(string(types.OCIImageIndex))
	return nil
}

// cachedTagSchema adds what a cached tag-schema index (<alg>-<hex>) lists.
func (c *Cache) cachedTagSchema(r route, d v1.Hash, descs []v1.Descriptor) []v1.Descriptor {
	tag, err := c.store.Tag(r.key, d.Algorithm+"-"+d.Hex)
	if err != nil {
		return descs
	}
	m, err := c.store.Manifest(tag.Digest)
	if err != nil || !types.MediaType(m.MediaType).IsIndex() {
		return descs
	}
	var index v1.IndexManifest
	if json.Unmarshal(m.Bytes, &index) != nil {
		return descs
	}
	return mergeDescriptors(descs, index.Manifests)
}

// mergeDescriptors appends the descriptors of b that a lacks (by digest).
func mergeDescriptors(a, b []v1.Descriptor) []v1.Descriptor {
	seen := map[v1.Hash]bool{}
	for _, d := range a {
		seen[d.Digest] = true
	}
	for _, d := range b {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			a = append(a, d)
		}
	}
	return a
}

func writeJSON(ctx *fasthttp.RequestCtx, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx.SetContentType("application/json")
	if ctx.IsHead() {
		ctx.Response.SkipBody = true
	}
	ctx.SetBody(b)
	return nil
}
