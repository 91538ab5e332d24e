package store

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Image is one unit of the store as the person looking after the box sees
// it (and as eviction will remove it): a top-level manifest with
// everything under it (the children of an index, config and layers, and
// the manifests that refer to it: signatures, SBOMs), or a blob no stored
// manifest names (pulled by digest alone).
type Image struct {
	Digest    v1.Hash   `json:"digest"`
	MediaType string    `json:"mediaType,omitempty"` // "" for a loose blob
	Tags      []string  `json:"tags,omitempty"`      // "<repo>:<tag>" pointing at it
	Repos     []string  `json:"repos,omitempty"`     // repositories it is linked to
	Size      int64     `json:"size"`                // bytes only this image holds (what removing it frees)
	Shared    int64     `json:"shared"`              // bytes it holds together with other images
	Items     int       `json:"items"`               // manifests and blobs under it
	Missing   int       `json:"missing,omitempty"`   // named but not stored (index children left out, layers not pulled)
	Stored    time.Time `json:"stored"`              // the oldest of its files: its age even if never read
	Accessed  time.Time `json:"accessed,omitempty"`  // last read of anything under it, at hour resolution
	PinnedBy  []string  `json:"pinnedBy,omitempty"`  // owners keeping it: "mirror:<name>", …
}

// Images lists every image in the store. It reads all the metadata in one
// transaction and stats each file once; on a Pi with 100,000 blobs that is
// seconds, so it is for `outpost images` and the status page, not for
// request paths.
func (s *Store) Images() ([]Image, error) {
	g := &graph{manifests: map[string]manifestMeta{}, blobs: map[string]int64{}, access: map[string]int64{},
		tags: map[string][]string{}, pins: map[string][]string{}, links: map[string][]string{}, referrers: map[string][]string{}}
	// Pending access times first: a flush between would move them from
	// here to the keys the transaction no longer sees.
	s.access.mu.Lock()
	for d, hour := range s.access.pending {
		g.access[d] = hour
	}
	s.access.mu.Unlock()
	if err := s.view(g.load); err != nil {
		return nil, err
	}

	// What each item is reachable from: the roots are the manifests that
	// are nobody's child and not a referrer of a stored manifest.
	child := map[string]bool{}
	for _, m := range g.manifests {
		for _, c := range m.Children {
			child[c] = true
		}
	}
	for d, m := range g.manifests {
		if m.Subject != "" && g.manifests[m.Subject].MediaType != "" {
			child[d] = true
		}
	}
	owners := map[string]int{} // item → how many roots reach it
	closure := map[string][]string{}
	var roots []string
	for d := range g.manifests {
		if !child[d] {
			roots = append(roots, d)
		}
	}
	for d := range g.blobs {
		if _, isManifest := g.manifests[d]; !child[d] && !isManifest {
			roots = append(roots, d) // a loose blob
		}
	}
	slices.Sort(roots)
	for _, r := range roots {
		items := g.reach(r)
		closure[r] = items
		for _, it := range items {
			owners[it]++
		}
	}
	out := make([]Image, 0, len(roots))
	stored := map[string]time.Time{} // file times, each file stat'ed once
	storedAt := func(it string) time.Time {
		if t, ok := stored[it]; ok {
			return t
		}
		var t time.Time
		if h, err := v1.NewHash(it); err == nil {
			if fi, err := os.Stat(s.blobPath(h)); err == nil {
				t = fi.ModTime()
			}
		}
		stored[it] = t
		return t
	}
	for _, r := range roots {
		d, err := v1.NewHash(r)
		if err != nil {
			continue
		}
		img := Image{Digest: d, MediaType: g.manifests[r].MediaType}
		tags, pins, repos := map[string]bool{}, map[string]bool{}, map[string]bool{}
		for _, it := range closure[r] {
			// A child tagged or pinned on its own (a platform image with
			// a tag of its own) shows with the image it belongs to.
			for _, t := range g.tags[it] {
				tags[t] = true
			}
			for _, p := range g.pins[it] {
				pins[p] = true
			}
			size, ok := g.size(it)
			if !ok {
				img.Missing++
				continue
			}
			img.Items++
			exclusive := owners[it] == 1
			if exclusive {
				img.Size += size
			} else {
				img.Shared += size
			}
			// Use of a shared layer says nothing about this image.
			if at := g.access[it]; at > 0 && (exclusive || it == r) {
				img.Accessed = maxTime(img.Accessed, time.Unix(at, 0))
			}
			if t := storedAt(it); !t.IsZero() && (img.Stored.IsZero() || t.Before(img.Stored)) {
				img.Stored = t
			}
		}
		for _, repo := range g.links[r] {
			repos[repo] = true
		}
		img.Tags, img.PinnedBy, img.Repos = sortedKeys(tags), sortedKeys(pins), sortedKeys(repos)
		out = append(out, img)
	}
	return out, nil
}

// graph is the store's metadata, read once.
type graph struct {
	manifests map[string]manifestMeta
	blobs     map[string]int64
	access    map[string]int64    // digest → unix seconds
	tags      map[string][]string // digest → "<repo>:<tag>"
	pins      map[string][]string // digest → owners
	links     map[string][]string // digest → repositories
	referrers map[string][]string // subject → referrer digests
}

func (g *graph) load(txn *badger.Txn) error {
	it := txn.NewIterator(badger.DefaultIteratorOptions)
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		key := string(it.Item().Key())
		err := it.Item().Value(func(v []byte) error {
			switch {
			case strings.HasPrefix(key, prefixManifest):
				var m manifestMeta
				if err := json.Unmarshal(v, &m); err != nil {
					return err
				}
				g.manifests[key[len(prefixManifest):]] = m
			case strings.HasPrefix(key, prefixBlob):
				var b blobMeta
				if err := json.Unmarshal(v, &b); err != nil {
					return err
				}
				g.blobs[key[len(prefixBlob):]] = b.Size
			case strings.HasPrefix(key, prefixAccess):
				at, _ := strconv.ParseInt(string(v), 10, 64)
				d := key[len(prefixAccess):]
				g.access[d] = max(g.access[d], at) // a pending time may be newer
			case strings.HasPrefix(key, prefixTag):
				var t tagMeta
				if err := json.Unmarshal(v, &t); err != nil {
					return err
				}
				repo, tag, _ := strings.Cut(key[len(prefixTag):], "\x00")
				g.tags[t.Digest] = append(g.tags[t.Digest], repo+":"+tag)
			case strings.HasPrefix(key, prefixPin):
				var p pinMeta
				if err := json.Unmarshal(v, &p); err != nil {
					return err
				}
				owner, _, _ := strings.Cut(key[len(prefixPin):], "\x00")
				if !slices.Contains(g.pins[p.Digest], owner) {
					g.pins[p.Digest] = append(g.pins[p.Digest], owner)
				}
			case strings.HasPrefix(key, prefixLink):
				repo, digest, _ := strings.Cut(key[len(prefixLink):], "\x00")
				g.links[digest] = append(g.links[digest], repo)
			case strings.HasPrefix(key, prefixReferrer):
				parts := strings.Split(key[len(prefixReferrer):], "\x00")
				if len(parts) == 3 {
					g.referrers[parts[1]] = append(g.referrers[parts[1]], parts[2])
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// reach lists root and everything under it: children, their children, and
// the referrers of each manifest, each once.
func (g *graph) reach(root string) []string {
	seen := map[string]bool{root: true}
	queue := []string{root}
	for i := 0; i < len(queue); i++ {
		d := queue[i]
		next := append(slices.Clone(g.manifests[d].Children), g.referrers[d]...)
		for _, c := range next {
			if !seen[c] {
				seen[c] = true
				queue = append(queue, c)
			}
		}
	}
	return queue
}

// size is an item's size and whether it is stored.
func (g *graph) size(d string) (int64, bool) {
	if m, ok := g.manifests[d]; ok {
		return m.Size, true
	}
	size, ok := g.blobs[d]
	return size, ok
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
