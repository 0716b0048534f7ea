package kvstore

import "container/list"

// Bounds of the read cache. A value is at most handlers.MaxValueSize (64
// KiB), so the byte bound, not the entry bound, is what limits a cache of
// big values.
const (
	MaxCacheEntries = 10000
	MaxCacheBytes   = 32 << 20
)

// cacheEntryOverhead is what an entry costs beyond its key and value bytes
// (list element, map slot, slice headers), counted so that many tiny
// entries cannot exceed MaxCacheBytes by much.
const cacheEntryOverhead = 96

// cacheEntry is one cached value and the seq of the change that wrote it.
type cacheEntry struct {
	key   string
	value []byte
	seq   int64
}

func (e *cacheEntry) size() int64 {
	return int64(len(e.key) + len(e.value) + cacheEntryOverhead)
}

// lru is a least-recently-used map of values bounded by entry count and
// bytes. It knows nothing of coherence (coherence.go) and is not safe for
// concurrent use: the store guards it with its mutex.
type lru struct {
	maxEntries int
	maxBytes   int64
	bytes      int64
	order      *list.List // of *cacheEntry, most recently used first
	entries    map[string]*list.Element
}

func newLRU(maxEntries int, maxBytes int64) *lru {
	return &lru{
		maxEntries: maxEntries,
		maxBytes:   maxBytes,
		order:      list.New(),
		entries:    make(map[string]*list.Element),
	}
}

// get returns the cached value of key and marks it recently used.
func (c *lru) get(key string) ([]byte, bool) {
	el, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*cacheEntry).value, true
}

// add caches value as key's value as of change seq, unless the cache holds
// a newer one. It takes ownership of value. A value too big for the cache
// on its own is not cached.
func (c *lru) add(key string, value []byte, seq int64) {
	e := &cacheEntry{key: key, value: value, seq: seq}
	if e.size() > c.maxBytes || c.maxEntries <= 0 {
		c.evictOlder(key, seq+1)
		return
	}
	if el, ok := c.entries[key]; ok {
		old := el.Value.(*cacheEntry)
		if old.seq > seq {
			return
		}
		c.bytes += e.size() - old.size()
		el.Value = e
		c.order.MoveToFront(el)
	} else {
		c.entries[key] = c.order.PushFront(e)
		c.bytes += e.size()
	}
	for c.order.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.remove(c.order.Back())
	}
}

// evictOlder drops key's entry if it predates change seq.
func (c *lru) evictOlder(key string, seq int64) {
	if el, ok := c.entries[key]; ok && el.Value.(*cacheEntry).seq < seq {
		c.remove(el)
	}
}

func (c *lru) remove(el *list.Element) {
	e := c.order.Remove(el).(*cacheEntry)
	delete(c.entries, e.key)
	c.bytes -= e.size()
}

// clear drops every entry.
func (c *lru) clear() {
	c.order.Init()
	clear(c.entries)
	c.bytes = 0
}

// keys returns the cached keys, most recently used first.
func (c *lru) keys() []string {
	ks := make([]string, 0, c.order.Len())
	for el := c.order.Front(); el != nil; el = el.Next() {
		ks = append(ks, el.Value.(*cacheEntry).key)
	}
	return ks
}
