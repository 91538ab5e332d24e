package store

import (
	"sync"
	"sync/atomic"
)

// tagCache keeps tags read, so that a manifest by tag (the request clients
// make most) needs no Badger read and no JSON decoding. Every tag write
// drops its entry after its transaction; a read that raced with a write
// does not store what it read (the generation moved on).
type tagCache struct {
	m   sync.Map // tag key → Tag
	n   atomic.Int32
	gen atomic.Uint64
}

const maxCachedTags = 16 << 10

func (c *tagCache) get(key string) (Tag, bool) {
	v, ok := c.m.Load(key)
	if !ok {
		return Tag{}, false
	}
	return v.(Tag), true
}

// put stores t if no tag was written since gen was read.
func (c *tagCache) put(key string, t Tag, gen uint64) {
	if c.gen.Load() != gen {
		return
	}
	if c.n.Add(1) > maxCachedTags {
		c.m.Clear()
		c.n.Store(0)
		return
	}
	c.m.Store(key, t)
	if c.gen.Load() != gen { // a write slipped in between the check and the store
		c.m.CompareAndDelete(key, t)
	}
}

// written drops a tag that a transaction just changed.
func (c *tagCache) written(key string) {
	c.gen.Add(1)
	c.m.Delete(key)
}
