package evidence

import (
	"container/list"
	"sync"
)

// packKey names one layout of a pack: a rewrite (Delete) bumps generation,
// so a cached copy of an older layout is never used again.
type packKey struct{ id, gen int32 }

// packCache is a small LRU of decompressed packs, bounded by their total
// size. Entries are shared read-only between readers.
type packCache struct {
	mu    sync.Mutex
	limit int64
	size  int64
	order *list.List // front = most recently used; values are *packEntry
	byKey map[packKey]*list.Element
}

type packEntry struct {
	key  packKey
	data []byte
}

func newPackCache(limit int64) *packCache {
	return &packCache{limit: limit, order: list.New(), byKey: map[packKey]*list.Element{}}
}

func (c *packCache) get(k packKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*packEntry).data, true
}

// add caches data under k, evicting least recently used packs to stay within
// the limit. A pack larger than the whole limit is not cached.
func (c *packCache) add(k packKey, data []byte) {
	n := int64(len(data))
	if n > c.limit {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[k]; ok {
		return
	}
	for c.size+n > c.limit {
		c.remove(c.order.Back())
	}
	c.byKey[k] = c.order.PushFront(&packEntry{k, data})
	c.size += n
}

// evictPack drops every cached generation of pack id.
func (c *packCache) evictPack(id int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.byKey {
		if k.id == id {
			c.remove(e)
		}
	}
}

func (c *packCache) remove(e *list.Element) {
	pe := c.order.Remove(e).(*packEntry)
	delete(c.byKey, pe.key)
	c.size -= int64(len(pe.data))
}
