package store

import (
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Manifests are served far more often than they change (never, by
// digest), and every client of a tag asks for the same few. The store keeps
// recently read small manifests in memory, bounded in bytes, and hands the
// same immutable slice to every caller: a thousand clients of one manifest
// cost one copy of it. Look-ups take no lock; eviction is a CLOCK sweep
// (an entry read since the last sweep gets another round).
const (
	manifestCacheBytes = 8 << 20
	maxCachedManifest  = 256 << 10
)

type manifestCache struct {
	entries sync.Map // v1.Hash → *cachedManifest
	mu      sync.Mutex
	order   []v1.Hash // insertion order, swept round-robin
	hand    int
	bytes   int64
	limit   int64
	gen     atomic.Uint64 // moves on with every removal
}

type cachedManifest struct {
	m    Manifest
	used atomic.Bool
}

func (c *manifestCache) init(limit int64) { c.limit = limit }

func (c *manifestCache) get(d v1.Hash) (Manifest, bool) {
	v, ok := c.entries.Load(d)
	if !ok {
		return Manifest{}, false
	}
	e := v.(*cachedManifest)
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e.m, true
}

// put keeps m, read when the removal generation was gen, unless a removal
// happened since (it could be m's).
func (c *manifestCache) put(m Manifest, gen uint64) {
	size := int64(len(m.Bytes))
	if size > maxCachedManifest || c.limit <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen {
		return
	}
	if _, loaded := c.entries.LoadOrStore(m.Digest, &cachedManifest{m: m}); loaded {
		return
	}
	c.order = append(c.order, m.Digest)
	c.bytes += size
	for c.bytes > c.limit && len(c.order) > 0 {
		if c.hand >= len(c.order) {
			c.hand = 0
		}
		d := c.order[c.hand]
		v, _ := c.entries.Load(d)
		if e, ok := v.(*cachedManifest); ok && e.used.Swap(false) {
			c.hand++
			continue
		}
		c.removeAt(c.hand)
	}
}

// removeAt drops order[i] (under mu).
func (c *manifestCache) removeAt(i int) {
	d := c.order[i]
	if v, ok := c.entries.LoadAndDelete(d); ok {
		c.bytes -= int64(len(v.(*cachedManifest).m.Bytes))
	}
	last := len(c.order) - 1
	c.order[i] = c.order[last]
	c.order = c.order[:last]
}

// forget drops d (it is being removed from the store).
func (c *manifestCache) forget(d v1.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	for i, x := range c.order {
		if x == d {
			c.removeAt(i)
			return
		}
	}
}
