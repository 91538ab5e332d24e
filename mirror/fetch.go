package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxManifestSize bounds what we read of a manifest; registries commonly
// refuse manifests above 4 MiB.
const maxManifestSize = 4 << 20

// acceptManifests asks for every manifest kind, so that what is stored is
// exactly what upstream has (an index by tag keeps its digest).
var acceptManifests = strings.Join([]string{
	string(types.OCIImageIndex), string(types.OCIManifestSchema1),
	string(types.DockerManifestList), string(types.DockerManifestSchema2),
}, ", ")

// Manifest fetches a manifest by tag or digest. The bytes are verified
// against the digest asked for, or against Docker-Content-Digest for a tag.
func (u *Upstream) Manifest(ctx context.Context, repo, ref string) ([]byte, v1.Descriptor, error) {
	resp, err := u.do(ctx, "manifest", http.MethodGet, repo, "/manifests/"+ref, http.Header{"Accept": {acceptManifests}})
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, v1.Descriptor{}, u.responseError("manifest", resp)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, v1.Descriptor{}, &Error{Upstream: u.opts.Name, Op: "manifest", Err: err}
	}
	if len(b) > maxManifestSize {
		return nil, v1.Descriptor{}, &Error{Upstream: u.opts.Name, Op: "manifest", Status: http.StatusBadGateway,
			Err: fmt.Errorf("%s:%s is larger than %d bytes", repo, ref, maxManifestSize)}
	}
	got, size, _ := v1.SHA256(bytes.NewReader(b))
	want, isDigest := digestRef(ref)
	if !isDigest {
		want, _ = v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
	}
	u.opts.Metrics.fetchedBytes.WithLabelValues(u.opts.Name).Add(float64(len(b)))
	if want.Algorithm == "sha256" && want != got {
		return nil, v1.Descriptor{}, u.failed(&Error{Upstream: u.opts.Name, Op: "manifest", Mismatch: true,
			Err: fmt.Errorf("%s@%s: content hashes to %s", repo, want, got)})
	}
	mt := manifestMediaType(resp.Header.Get("Content-Type"), b)
	return b, v1.Descriptor{MediaType: types.MediaType(mt), Size: size, Digest: got}, nil
}

// Head asks upstream what a tag (or digest) points at, within the
// revalidation deadline. The digest is zero if upstream did not say.
func (u *Upstream) Head(ctx context.Context, repo, ref string) (v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.RevalidateTimeout)
	defer cancel()
	resp, err := u.do(ctx, "head", http.MethodHead, repo, "/manifests/"+ref, http.Header{"Accept": {acceptManifests}})
	if err != nil {
		return v1.Descriptor{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return v1.Descriptor{}, u.responseError("head", resp)
	}
	resp.Body.Close()
	d, _ := v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
	return v1.Descriptor{MediaType: types.MediaType(mediaTypeOf(resp.Header.Get("Content-Type"))), Size: resp.ContentLength, Digest: d}, nil
}

// Blob opens a blob from offset on. size is the blob's total size, or -1 if
// upstream did not say. The caller verifies the bytes and closes the body.
func (u *Upstream) Blob(ctx context.Context, repo string, d v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	header := http.Header{}
	if offset > 0 {
		header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := u.do(ctx, "blob", http.MethodGet, repo, "/blobs/"+d.String(), header)
	if err != nil {
		return nil, 0, err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		body := u.blobBody(resp.Body)
		if offset > 0 { // upstream ignored Range: skip what we have
			if _, err := io.CopyN(io.Discard, body, offset); err != nil {
				body.Close()
				return nil, 0, &Error{Upstream: u.opts.Name, Op: "blob", Err: err}
			}
		}
		return body, resp.ContentLength, nil
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		return u.blobBody(resp.Body), contentRangeTotal(resp.Header.Get("Content-Range")), nil
	}
	return nil, 0, u.responseError("blob", resp)
}

// contentRangeTotal reads the total of "bytes a-b/total", or -1.
func contentRangeTotal(v string) int64 {
	_, total, ok := strings.Cut(v, "/")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(total, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func digestRef(ref string) (v1.Hash, bool) {
	if !strings.Contains(ref, ":") {
		return v1.Hash{}, false
	}
	h, err := v1.NewHash(ref)
	return h, err == nil
}

// manifestMediaType trusts a specific Content-Type; for a generic one it
// reads the manifest's own mediaType field.
func manifestMediaType(contentType string, b []byte) string {
	mt := mediaTypeOf(contentType)
	if mt != "" && mt != "application/json" && mt != "text/plain" && mt != "application/octet-stream" {
		return mt
	}
	var m struct {
		MediaType string `json:"mediaType"`
		Manifests []any  `json:"manifests"`
	}
	if json.Unmarshal(b, &m) == nil {
		switch {
		case m.MediaType != "":
			return m.MediaType
		case m.Manifests != nil:
			return string(types.OCIImageIndex)
		}
	}
	return string(types.OCIManifestSchema1)
}

// maxTagPages bounds how many pages of a tag list are followed.
const maxTagPages = 50

// Tags lists a repository's tags upstream, following Link pagination.
func (u *Upstream) Tags(ctx context.Context, repo string) ([]string, error) {
	var tags []string
	query := "n=1000"
	for page := 0; page < maxTagPages && query != ""; page++ {
		resp, err := u.do(ctx, "tags", http.MethodGet, repo, "/tags/list?"+query, nil)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, u.responseError("tags", resp)
		}
		var list struct {
			Tags []string `json:"tags"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&list)
		resp.Body.Close()
		if err != nil {
			return nil, &Error{Upstream: u.opts.Name, Op: "tags", Err: err}
		}
		tags = append(tags, list.Tags...)
		query = nextQuery(resp.Header.Get("Link"))
	}
	return tags, nil
}

// nextQuery extracts the query of a `<url>; rel="next"` Link header.
func nextQuery(link string) string {
	target, _, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(link), "<"), ">")
	if !ok {
		return ""
	}
	_, q, _ := strings.Cut(target, "?")
	return q
}

// blobBody wraps a blob body: it counts bytes as fetched from upstream,
// and closes the body when a read waits longer than the idle timeout, since
// a dead uplink often drops packets silently instead of resetting. The
// caller's next read then fails, and it can resume with Range.
func (u *Upstream) blobBody(body io.ReadCloser) io.ReadCloser {
	b := &blobBody{ReadCloser: body, idle: u.opts.BodyIdleTimeout,
		counter: u.opts.Metrics.fetchedBytes.WithLabelValues(u.opts.Name)}
	b.timer = time.AfterFunc(b.idle, func() { body.Close() })
	b.timer.Stop()
	return b
}

type blobBody struct {
	io.ReadCloser
	idle    time.Duration
	timer   *time.Timer
	counter interface{ Add(float64) }
}

func (b *blobBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.ReadCloser.Read(p)
	if !b.timer.Stop() && err != nil {
		err = fmt.Errorf("no data for %v: %w", b.idle, err)
	}
	b.counter.Add(float64(n))
	return n, err
}

// Referrers lists the manifests upstream knows whose subject is d (the OCI
// 1.1 referrers API). A registry without that API answers 404, which comes
// back as an *Error whose NotFound is true.
func (u *Upstream) Referrers(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error) {
	resp, err := u.do(ctx, "referrers", http.MethodGet, repo, "/referrers/"+d.String(),
		http.Header{"Accept": {string(types.OCIImageIndex)}})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, u.responseError("referrers", resp)
	}
	defer resp.Body.Close()
	index, err := v1.ParseIndexManifest(io.LimitReader(resp.Body, maxManifestSize))
	if err != nil {
		return nil, &Error{Upstream: u.opts.Name, Op: "referrers", Err: err}
	}
	return index.Manifests, nil
}
