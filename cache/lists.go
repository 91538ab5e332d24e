package cache

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/valyala/fasthttp"
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

// listTimeout bounds asking upstream for a tag or referrers list; offline,
// what the cache holds is the answer.
const listTimeout = 5 * time.Second

// tags lists a repository's tags: upstream's merged with the cached ones
// when upstream answers, the cached ones when it does not.
func (c *Cache) tags(ctx *fasthttp.RequestCtx, r route) error {
	tags, err := c.store.Tags(r.key)
	if err != nil {
		return err
	}
	known := len(tags) > 0 || c.store.HasRepository(r.key)
	if !r.up.Down() {
		upCtx, cancel := context.WithTimeout(c.ctx, listTimeout)
		remote, err := r.up.Tags(upCtx, r.repo)
		cancel()
		switch {
		case err == nil:
			tags, known = union(tags, remote), true
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

// referrers answers the referrers API: what upstream lists, merged with the
// referrers the cache holds (all that is known offline, or from a registry
// without the API).
func (c *Cache) referrers(ctx *fasthttp.RequestCtx, r route) error {
	d, _ := v1.NewHash(r.ref)
	descs, err := c.store.Referrers(r.key, d)
	if err != nil {
		return err
	}
	if !r.up.Down() {
		upCtx, cancel := context.WithTimeout(c.ctx, listTimeout)
		remote, err := r.up.Referrers(upCtx, r.repo, d)
		cancel()
		if err != nil && !isNotFound(err) {
			c.log.Warn("serving cached referrers", "repo", r.key, "err", err)
		}
		descs = mergeDescriptors(descs, remote)
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
