package store

import (
	"sync"
	"sync/atomic"
)

// linkCache remembers links found, so that the hot paths (every blob and
// manifest request checks that its repository references the content)
// need no Badger read. Links are only ever added while Outpost serves; the
// code that deletes them (GC, eviction) must call forgetLinks. Bounded: when
// full it starts over, which costs one Badger read per link again.
type linkCache struct {
	m sync.Map // link key → struct{}
	n atomic.Int32
}

const maxCachedLinks = 16 << 10

func (c *linkCache) has(key string) bool {
	_, ok := c.m.Load(key)
	return ok
}

func (c *linkCache) add(key string) {
	if c.n.Add(1) > maxCachedLinks {
		c.forgetAll()
		return
	}
	c.m.Store(key, struct{}{})
}

// forgetAll drops every remembered link.
func (c *linkCache) forgetAll() {
	c.m.Clear()
	c.n.Store(0)
}
