package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Manifest fetches a manifest by tag or digest. It comes back only if it is
// a manifest of a supported media type and its bytes hash to the digest
// asked for, or for a tag to Docker-Content-Digest when upstream sent one.
func (u *Upstream) Manifest(ctx context.Context, repo, ref string) ([]byte, v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.RequestTimeout)
	defer cancel()
	resp, err := u.do(ctx, "manifest", http.MethodGet, repo, "/manifests/"+ref, nil, http.Header{"Accept": {acceptManifests}})
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, v1.Descriptor{}, u.failed(responseError(u.opts.Name, "manifest", resp))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, v1.Descriptor{}, u.failed(&Error{Upstream: u.opts.Name, Op: "manifest", Err: redactErr(err)})
	}
	u.opts.Metrics.fetchedBytes.WithLabelValues(u.opts.Name).Add(float64(len(b)))
	bad := func(mismatch bool, format string, a ...any) error {
		return u.failed(&Error{Upstream: u.opts.Name, Op: "manifest", Mismatch: mismatch, Invalid: !mismatch,
			Err: fmt.Errorf("%s:%s: "+format, append([]any{repo, ref}, a...)...)})
	}
	if len(b) > maxManifestSize {
		return nil, v1.Descriptor{}, bad(false, "larger than %d bytes", maxManifestSize)
	}
	want, isDigest := digestRef(ref)
	if !isDigest {
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
			if want, err = v1.NewHash(h); err != nil {
				return nil, v1.Descriptor{}, bad(false, "bad Docker-Content-Digest %q", h)
			}
		}
	}
	got, size, _ := v1.SHA256(bytes.NewReader(b))
	if want.Hex != "" {
		if ok, err := hashes(b, want); err != nil || !ok {
			return nil, v1.Descriptor{}, bad(true, "content does not hash to %s", want)
		}
	}
	mt, err := CheckManifest(b, resp.Header.Get("Content-Type"))
	if err != nil {
		return nil, v1.Descriptor{}, bad(false, "%v", err)
	}
	return b, v1.Descriptor{MediaType: types.MediaType(mt), Size: size, Digest: got}, nil
}

// hashes reports whether b hashes to d (sha256 or sha512).
func hashes(b []byte, d v1.Hash) (bool, error) {
	h, err := v1.Hasher(d.Algorithm)
	if err != nil {
		return false, err
	}
	h.Write(b)
	return fmt.Sprintf("%x", h.Sum(nil)) == d.Hex, nil
}

// Head asks upstream what a tag (or digest) points at. The digest is zero
// if upstream did not say.
func (u *Upstream) Head(ctx context.Context, repo, ref string) (v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.RequestTimeout)
	defer cancel()
	resp, err := u.do(ctx, "head", http.MethodHead, repo, "/manifests/"+ref, nil, http.Header{"Accept": {acceptManifests}})
	if err != nil {
		return v1.Descriptor{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return v1.Descriptor{}, u.failed(responseError(u.opts.Name, "head", resp))
	}
	resp.Body.Close()
	d, _ := v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
	return v1.Descriptor{MediaType: types.MediaType(mediaTypeOf(resp.Header.Get("Content-Type"))), Size: resp.ContentLength, Digest: d}, nil
}

// BlobHead asks upstream whether repo has blob d, and its size, without
// downloading it.
func (u *Upstream) BlobHead(ctx context.Context, repo string, d v1.Hash) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.RequestTimeout)
	defer cancel()
	resp, err := u.do(ctx, "blobhead", http.MethodHead, repo, "/blobs/"+d.String(), nil, nil)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, u.failed(responseError(u.opts.Name, "blobhead", resp))
	}
	resp.Body.Close()
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != d.String() {
		return 0, u.failed(&Error{Upstream: u.opts.Name, Op: "blobhead", Mismatch: true,
			Err: fmt.Errorf("asked for %s, upstream says %s", d, h)})
	}
	if resp.ContentLength < 0 {
		return 0, u.failed(&Error{Upstream: u.opts.Name, Op: "blobhead", Invalid: true, Err: fmt.Errorf("no Content-Length for %s", d)})
	}
	if u.opts.MaxBlobSize > 0 && resp.ContentLength > u.opts.MaxBlobSize {
		return 0, u.failed(&Error{Upstream: u.opts.Name, Op: "blobhead", Invalid: true,
			Err: fmt.Errorf("%s is %d bytes, more than the limit of %d", d, resp.ContentLength, u.opts.MaxBlobSize)})
	}
	return resp.ContentLength, nil
}

func digestRef(ref string) (v1.Hash, bool) {
	if !strings.Contains(ref, ":") {
		return v1.Hash{}, false
	}
	h, err := v1.NewHash(ref)
	return h, err == nil
}

// Bounds of a tag list: pages followed, bytes per page, tags in all. A list
// beyond them is cut there (what was read is returned).
const (
	maxTagPages     = 50
	maxTagPageBytes = 4 << 20
	maxTags         = 100_000
)

// Tags lists a repository's tags upstream, following Link pagination.
func (u *Upstream) Tags(ctx context.Context, repo string) ([]string, error) {
	tags, _, err := u.list(ctx, "tags", repo, "/tags/list")
	return tags, err
}

// TagList is Tags, and whether the list is whole: false when it was cut
// at the bounds above (a mirror must not unpin what it did not see).
func (u *Upstream) TagList(ctx context.Context, repo string) ([]string, bool, error) {
	return u.list(ctx, "tags", repo, "/tags/list")
}

// Catalog lists the upstream's repositories (the _catalog API, which many
// registries, Docker Hub among them, do not offer), following Link
// pagination.
func (u *Upstream) Catalog(ctx context.Context) ([]string, error) {
	repos, _, err := u.list(ctx, "catalog", "", "_catalog")
	return repos, err
}

// list reads a paginated name list (tags or repositories) within the bounds
// above, and says whether it read all of it.
func (u *Upstream) list(ctx context.Context, op, repo, path string) ([]string, bool, error) {
	var names []string
	query := url.Values{"n": {"1000"}}
	for page := 0; page < maxTagPages && query != nil && len(names) < maxTags; page++ {
		list, next, err := u.listPage(ctx, op, repo, path, query)
		if err != nil {
			return nil, false, err
		}
		names = append(names, list...)
		query = next
	}
	whole := query == nil && len(names) <= maxTags
	if len(names) > maxTags {
		names = names[:maxTags]
	}
	return names, whole, nil
}

func (u *Upstream) listPage(ctx context.Context, op, repo, path string, query url.Values) ([]string, url.Values, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.RequestTimeout)
	defer cancel()
	resp, err := u.do(ctx, op, http.MethodGet, repo, path, query, nil)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, u.failed(responseError(u.opts.Name, op, resp))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTagPageBytes+1))
	if err != nil {
		return nil, nil, u.failed(&Error{Upstream: u.opts.Name, Op: op, Err: redactErr(err)})
	}
	if len(b) > maxTagPageBytes {
		return nil, nil, u.failed(&Error{Upstream: u.opts.Name, Op: op, Invalid: true,
			Err: fmt.Errorf("a page of the %s list is larger than %d bytes", op, maxTagPageBytes)})
	}
	var list struct {
		Tags         []string `json:"tags"`
		Repositories []string `json:"repositories"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, nil, u.failed(&Error{Upstream: u.opts.Name, Op: op, Invalid: true, Err: fmt.Errorf("not a %s list: %v", op, firstLine(err))})
	}
	if repo == "" {
		return list.Repositories, nextQuery(resp.Header.Get("Link")), nil
	}
	return list.Tags, nextQuery(resp.Header.Get("Link")), nil
}

// nextQuery extracts the query of the rel="next" link of a Link header, or nil.
func nextQuery(header string) url.Values {
	for _, link := range strings.Split(header, ",") {
		target, params, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(link), "<"), ">")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		_, q, _ := strings.Cut(target, "?")
		if v, err := url.ParseQuery(q); err == nil && len(v) > 0 {
			return v
		}
	}
	return nil
}

// Referrers lists the manifests upstream knows whose subject is d: with the
// OCI 1.1 referrers API, or where upstream lacks it (404), from the tag
// schema's index (the tag <alg>-<hex>). Nothing known is an empty list.
func (u *Upstream) Referrers(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error) {
	descs, err := u.referrersAPI(ctx, repo, d)
	var ue *Error
	if err == nil || !errors.As(err, &ue) || !ue.NotFound() {
		return descs, err
	}
	b, desc, err := u.Manifest(ctx, repo, d.Algorithm+"-"+d.Hex)
	switch {
	case errors.As(err, &ue) && ue.NotFound():
		return nil, nil
	case err != nil:
		return nil, err
	case !desc.MediaType.IsIndex():
		return nil, nil
	}
	index, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, nil
	}
	return index.Manifests, nil
}

func (u *Upstream) referrersAPI(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.RequestTimeout)
	defer cancel()
	resp, err := u.do(ctx, "referrers", http.MethodGet, repo, "/referrers/"+d.String(), nil,
		http.Header{"Accept": {string(types.OCIImageIndex)}})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, u.failed(responseError(u.opts.Name, "referrers", resp))
	}
	defer resp.Body.Close()
	index, err := v1.ParseIndexManifest(io.LimitReader(resp.Body, maxManifestSize))
	if err != nil {
		return nil, u.failed(&Error{Upstream: u.opts.Name, Op: "referrers", Invalid: true, Err: fmt.Errorf("not an index: %v", firstLine(err))})
	}
	return index.Manifests, nil
}
