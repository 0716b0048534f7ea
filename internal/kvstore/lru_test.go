package kvstore

import (
	"bytes"
	"slices"
	"testing"
)

func TestCacheBounds(t *testing.T) {
	entry := func(k string) int64 { return int64(len(k) + 1 + cacheEntryOverhead) } // one-byte values
	tests := []struct {
		name       string
		maxEntries int
		maxBytes   int64
		adds       []string
		want       []string // most recently used first
	}{
		{"under both bounds", 3, 1 << 20, []string{"a", "b"}, []string{"b", "a"}},
		{"entry bound evicts the least recently used", 2, 1 << 20, []string{"a", "b", "c"}, []string{"c", "b"}},
		{"a re-add refreshes", 2, 1 << 20, []string{"a", "b", "a", "c"}, []string{"c", "a"}},
		{"byte bound", 100, 2 * entry("a"), []string{"a", "b", "c"}, []string{"c", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newLRU(tt.maxEntries, tt.maxBytes)
			for i, k := range tt.adds {
				c.add(k, []byte("v"), int64(i+1))
			}
			if got := c.keys(); !slices.Equal(got, tt.want) {
				t.Errorf("keys after adding %q = %q, want %q", tt.adds, got, tt.want)
			}
			var bytes int64
			for _, k := range tt.want {
				bytes += entry(k)
			}
			if c.bytes != bytes {
				t.Errorf("bytes = %d, want %d", c.bytes, bytes)
			}
		})
	}
}

func TestCacheKeepsNewerSeq(t *testing.T) {
	c := newLRU(10, 1<<20)
	c.add("k", []byte("new"), 5)
	c.add("k", []byte("old"), 4)
	if v, _ := c.get("k"); !bytes.Equal(v, []byte("new")) {
		t.Errorf("get(k) after add(new, seq 5) then add(old, seq 4) = %q, want new", v)
	}
	c.evictOlder("k", 5)
	if _, ok := c.get("k"); !ok {
		t.Error("evictOlder(k, 5) dropped an entry of seq 5, want it kept")
	}
	c.evictOlder("k", 6)
	if _, ok := c.get("k"); ok {
		t.Error("evictOlder(k, 6) kept an entry of seq 5, want it dropped")
	}
	c.add("big", make([]byte, 2<<20), 7)
	if _, ok := c.get("big"); ok || c.bytes != 0 {
		t.Errorf("a value larger than the cache was cached (bytes %d)", c.bytes)
	}
}
