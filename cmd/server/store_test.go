package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/handoff-go/handoff/handlers"
	"github.com/rs/zerolog"
)

// newTestStore opens a store in dir that is closed when the test ends.
// Two stores on one dir stand for two generations: SQLite treats the
// connections of two *sql.DB in one process as it treats two processes.
func newTestStore(t *testing.T, dir string) *store {
	t.Helper()
	s, err := openStore(t.Context(), dir, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatalf("openStore(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func mustPut(t *testing.T, s *store, key, value string) {
	t.Helper()
	if _, err := s.Put(t.Context(), key, []byte(value)); err != nil {
		t.Fatalf("Put(%q, %q): %v", key, value, err)
	}
}

// mustGet returns key's value, or "<absent>".
func mustGet(t *testing.T, s *store, key string) string {
	t.Helper()
	v, ok, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if !ok {
		return "<absent>"
	}
	return string(v)
}

// dbValue reads key's value from the database, bypassing every cache.
func dbValue(t *testing.T, s *store, key string) string {
	t.Helper()
	var v []byte
	err := s.db.QueryRowContext(t.Context(), "SELECT value FROM kv WHERE key = ?", key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "<absent>"
	}
	if err != nil {
		t.Fatalf("read %q from the database: %v", key, err)
	}
	return string(v)
}

func TestStoreCRUD(t *testing.T) {
	s := newTestStore(t, t.TempDir())
	var kv handlers.KV = s // the store is what the handlers need
	ctx := t.Context()
	steps := []struct {
		op, key, value string
		want           string // Get's value, or "<absent>"; Put's and Delete's bool
	}{
		{"get", "a", "", "<absent>"},
		{"put", "a", "v1", "true"},
		{"get", "a", "", "v1"},
		{"get", "a", "", "v1"}, // from the cache
		{"put", "a", "v2", "false"},
		{"get", "a", "", "v2"},
		{"put", "empty", "", "true"},
		{"get", "empty", "", ""},
		{"delete", "a", "", "true"},
		{"get", "a", "", "<absent>"},
		{"delete", "a", "", "false"},
		{"put", "a", "v3", "true"},
		{"get", "a", "", "v3"},
		{"put", "ключ/✓", "ü", "true"},
		{"get", "ключ/✓", "", "ü"},
	}
	for i, st := range steps {
		var got string
		switch st.op {
		case "get":
			v, ok, err := kv.Get(ctx, st.key)
			if err != nil {
				t.Fatalf("step %d: Get(%q): %v", i, st.key, err)
			}
			got = "<absent>"
			if ok {
				got = string(v)
			}
		case "put":
			created, err := kv.Put(ctx, st.key, []byte(st.value))
			if err != nil {
				t.Fatalf("step %d: Put(%q): %v", i, st.key, err)
			}
			got = strconv.FormatBool(created)
		case "delete":
			existed, err := kv.Delete(ctx, st.key)
			if err != nil {
				t.Fatalf("step %d: Delete(%q): %v", i, st.key, err)
			}
			got = strconv.FormatBool(existed)
		}
		if got != st.want {
			t.Errorf("step %d: %s(%q) = %q, want %q", i, st.op, st.key, got, st.want)
		}
	}
}

// A caller that changes the slice it got or gave cannot change the store.
func TestStoreValuesAreCopies(t *testing.T) {
	s := newTestStore(t, t.TempDir())
	v := []byte("abc")
	if _, err := s.Put(t.Context(), "k", v); err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	got, _, _ := s.Get(t.Context(), "k")
	got[1] = 'Y'
	if g := mustGet(t, s, "k"); g != "abc" {
		t.Errorf("Get(k) after the caller changed its slices = %q, want abc", g)
	}
}

func TestStoreList(t *testing.T) {
	s := newTestStore(t, t.TempDir())
	keys := []string{"a", "a/1", "a/2", "a/3", "ab", "b", "b/1", "z\u00ff", "z\u0100", "é"}
	for _, k := range keys {
		mustPut(t, s, k, "v")
	}
	tests := []struct {
		prefix, after string
		limit         int
		want          []string
		wantNext      string
	}{
		{"", "", 100, keys, ""}, // keys are in byte order already
		{"", "", 3, []string{"a", "a/1", "a/2"}, "a/2"},
		{"", "a/2", 3, []string{"a/3", "ab", "b"}, "b"},
		{"", "z\u0100", 3, []string{"é"}, ""},
		{"", "é", 3, []string{}, ""},
		{"a/", "", 2, []string{"a/1", "a/2"}, "a/2"},
		{"a/", "a/2", 2, []string{"a/3"}, ""},
		{"a/", "a/3", 2, []string{}, ""},
		{"a", "", 10, []string{"a", "a/1", "a/2", "a/3", "ab"}, ""},
		{"a", "0", 10, []string{"a", "a/1", "a/2", "a/3", "ab"}, ""}, // after sorts before prefix
		{"b", "a/2", 10, []string{"b", "b/1"}, ""},
		{"b", "c", 10, []string{}, ""}, // after sorts after the prefix's keys
		{"z", "", 10, []string{"z\u00ff", "z\u0100"}, ""},
		{"z\u00ff", "", 10, []string{"z\u00ff"}, ""},
		{"nope", "", 10, []string{}, ""},
		{"a/3", "", 1, []string{"a/3"}, ""}, // a full last page has no next
	}
	for _, tt := range tests {
		name := fmt.Sprintf("prefix=%q after=%q limit=%d", tt.prefix, tt.after, tt.limit)
		t.Run(name, func(t *testing.T) {
			got, next, err := s.List(t.Context(), tt.prefix, tt.after, tt.limit)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if !slices.Equal(got, tt.want) || next != tt.wantNext {
				t.Errorf("List(%s) = %q, next %q; want %q, next %q", name, got, next, tt.want, tt.wantNext)
			}
		})
	}

	// Walking page by page sees every key once, in order.
	var all []string
	after := ""
	for range len(keys) + 2 {
		page, next, err := s.List(t.Context(), "", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(all, keys) {
		t.Errorf("pages of 3 = %q, want %q", all, keys)
	}
}

func TestPrefixEnd(t *testing.T) {
	tests := []struct {
		prefix, want string
		ok           bool
	}{
		{"", "", false},
		{"a", "b", true},
		{"a/", "a0", true},
		{"a\xff", "b", true},
		{"\xff\xff", "", false},
	}
	for _, tt := range tests {
		got, ok := prefixEnd(tt.prefix)
		if got != tt.want || ok != tt.ok {
			t.Errorf("prefixEnd(%q) = %q, %v; want %q, %v", tt.prefix, got, ok, tt.want, tt.ok)
		}
	}
}

// The tests run as root, for whom a read-only mode changes nothing; a path
// under a regular file is not writable for anyone.
func TestOpenStoreNotWritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "data")
	s, err := openStore(t.Context(), dir, zerolog.New(zerolog.NewTestWriter(t)))
	if err == nil {
		s.Close(context.Background())
		t.Fatalf("openStore(%s) = nil error, want one saying it is not writable", dir)
	}
	if want := "data directory " + dir + " is not writable"; !strings.Contains(err.Error(), want) {
		t.Errorf("openStore(%s) = %q, want it to contain %q", dir, err, want)
	}
}

// Every pooled connection gets the pragmas, not only the first.
func TestStorePragmasOnEveryConnection(t *testing.T) {
	s := newTestStore(t, t.TempDir())
	conns := make([]*sql.Conn, storeMaxConns-1) // one is the watch
	for i := range conns {
		c, err := s.db.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for i, c := range conns {
		var mode string
		var syncMode, busy int
		if err := c.QueryRowContext(t.Context(), "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(t.Context(), "PRAGMA synchronous").Scan(&syncMode); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(t.Context(), "PRAGMA busy_timeout").Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || syncMode != 2 || busy != 5000 {
			t.Errorf("connection %d: journal_mode %s, synchronous %d, busy_timeout %d; want wal, 2 (FULL), 5000",
				i, mode, syncMode, busy)
		}
	}
}

// Two generations share the database. A value one caches must never hide
// a change the other committed.
func TestStoreCrossGeneration(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, b *store)
		want   string
	}{
		{"overwrite", func(t *testing.T, b *store) { mustPut(t, b, "k", "v2") }, "v2"},
		{"delete", func(t *testing.T, b *store) {
			if _, err := b.Delete(t.Context(), "k"); err != nil {
				t.Fatal(err)
			}
		}, "<absent>"},
		{"delete and put again", func(t *testing.T, b *store) {
			if _, err := b.Delete(t.Context(), "k"); err != nil {
				t.Fatal(err)
			}
			mustPut(t, b, "k", "v3")
		}, "v3"},
		{"put the same value", func(t *testing.T, b *store) { mustPut(t, b, "k", "v1") }, "v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := newTestStore(t, dir), newTestStore(t, dir)
			mustPut(t, a, "k", "v1")
			for range 2 {
				if got := mustGet(t, a, "k"); got != "v1" {
					t.Fatalf("A.Get(k) after A.Put(k, v1) = %q, want v1", got)
				}
			}
			if st := a.CacheStats(); st.Hits != 2 {
				t.Fatalf("A's cache stats %+v, want 2 hits: k is not cached, so the test proves nothing", st)
			}
			tt.change(t, b)
			if got := mustGet(t, a, "k"); got != tt.want {
				t.Errorf("A.Get(k) after B's %s = %q, want %q", tt.name, got, tt.want)
			}
			if got := mustGet(t, b, "k"); got != tt.want {
				t.Errorf("B.Get(k) after B's %s = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}

// Regression test: a miss that read a value, then lost the race with
// another generation's write and with the check that evicted the key,
// cached the stale value for good. cacheAdd must refuse a value read
// before the changes the cache has already reconciled.
func TestStoreStaleFillRefused(t *testing.T) {
	dir := t.TempDir()
	a, b := newTestStore(t, dir), newTestStore(t, dir)
	mustPut(t, a, "k", "v1")
	var seq1 int64
	if err := a.db.QueryRowContext(t.Context(), "SELECT seq FROM kv WHERE key = 'k'").Scan(&seq1); err != nil {
		t.Fatal(err)
	}
	mustGet(t, a, "other") // A reconciles up to v1 and leaves k uncached
	a.mu.Lock()
	a.cache.clear()
	a.mu.Unlock()

	// A's miss on k reads v1 at seq1 (high-water mark seq1); before it
	// caches it, B writes v2 and A's check for another Get processes it.
	mustPut(t, b, "k", "v2")
	mustGet(t, a, "other")
	if a.cacheAdd("k", []byte("v1"), seq1, seq1) {
		t.Error("cacheAdd(k, v1) of a value read before a change A has reconciled = true, want false")
	}
	if got := mustGet(t, a, "k"); got != "v2" {
		t.Errorf("A.Get(k) after B.Put(k, v2) and a late fill of v1 = %q, want v2", got)
	}
}

// A cache whose next changes were trimmed from the changelog cannot tell
// which keys changed, so it must drop everything.
func TestStoreTrimmedChangelogDropsCache(t *testing.T) {
	dir := t.TempDir()
	a, b := newTestStore(t, dir), newTestStore(t, dir)
	mustPut(t, a, "k1", "v1")
	mustPut(t, a, "k2", "v1")
	mustGet(t, a, "k1")
	mustPut(t, b, "k1", "v2")
	mustPut(t, b, "k2", "v2")
	// Keep only the last row (k2's), as a trim far behind would.
	if _, err := b.db.ExecContext(t.Context(), "DELETE FROM changelog WHERE seq < (SELECT MAX(seq) FROM changelog)"); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, a, "k1"); got != "v2" {
		t.Errorf("A.Get(k1) after B.Put(k1, v2) and a trim of that change = %q, want v2", got)
	}
}

// Writers and readers on both generations at once. Each key has one
// writer, so after its Put is acknowledged the writer knows the one right
// answer and checks it on the other generation; readers check that no key
// ever goes back to an older value. Run with -race.
// A watch connection that database/sql retired (or that failed) must not
// leave the store failing or serving from an unchecked cache.
func TestStoreWatchConnectionLost(t *testing.T) {
	dir := t.TempDir()
	a, b := newTestStore(t, dir), newTestStore(t, dir)
	mustPut(t, a, "k", "v1")
	mustGet(t, a, "k")
	a.mu.Lock()
	a.watch.Close()
	a.mu.Unlock()
	mustPut(t, b, "k", "v2")
	if got := mustGet(t, a, "k"); got != "v2" {
		t.Errorf("A.Get(k) after A's watch connection closed and B.Put(k, v2) = %q, want v2", got)
	}
	if got := mustGet(t, a, "k"); got != "v2" {
		t.Errorf("second A.Get(k) = %q, want v2", got)
	}
}

func TestStoreConcurrentGenerations(t *testing.T) {
	dir := t.TempDir()
	stores := []*store{newTestStore(t, dir), newTestStore(t, dir)}
	const (
		writers = 4
		readers = 4
		writes  = 60
		reads   = 300
	)
	key := func(w int) string { return "key" + strconv.Itoa(w) }
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			k := key(w)
			for n := 1; n <= writes; n++ {
				from, to := stores[n%2], stores[(n+1)%2]
				want := strconv.Itoa(n)
				if n%10 == 0 {
					if _, err := from.Delete(ctx, k); err != nil {
						t.Errorf("Delete(%s): %v", k, err)
						return
					}
					want = ""
				} else if _, err := from.Put(ctx, k, []byte(want)); err != nil {
					t.Errorf("Put(%s, %s): %v", k, want, err)
					return
				}
				v, ok, err := to.Get(ctx, k)
				if err != nil {
					t.Errorf("Get(%s): %v", k, err)
					return
				}
				if got := string(v); got != want || ok != (want != "") {
					t.Errorf("other generation's Get(%s) after Put/Delete #%d = %q (found %v), want %q", k, n, got, ok, want)
					return
				}
			}
		})
	}
	for r := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			last := make(map[string]int) // by key, on either generation
			for range reads {
				si := rng.IntN(2)
				k := key(rng.IntN(writers))
				v, ok, err := stores[si].Get(ctx, k)
				if err != nil {
					t.Errorf("Get(%s): %v", k, err)
					return
				}
				if !ok {
					continue
				}
				n, err := strconv.Atoi(string(v))
				if err != nil {
					t.Errorf("Get(%s) = %q, not a value any writer wrote", k, v)
					return
				}
				if n < last[k] {
					t.Errorf("store %d: Get(%s) = %d after this reader saw %d: a value went back in time", si, k, n, last[k])
					return
				}
				last[k] = n
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, s := range stores {
		for w := range writers {
			k := key(w)
			if got, want := mustGet(t, s, k), dbValue(t, s, k); got != want {
				t.Errorf("store %d: final Get(%s) = %q, want the database's %q", i, k, got, want)
			}
		}
	}
}

func TestStorePersistAndWarm(t *testing.T) {
	dir := t.TempDir()
	old := newTestStore(t, dir)
	keys := []string{"a", "b", "c"}
	for _, k := range keys {
		mustPut(t, old, k, "old-"+k)
	}
	if err := old.PersistCache(t.Context()); err != nil {
		t.Fatalf("PersistCache: %v", err)
	}
	// A write after the snapshot: Warm must read values from the database.
	mustPut(t, old, "b", "new-b")
	if _, err := old.Delete(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s := newTestStore(t, dir)
	if err := s.Warm(t.Context()); err != nil {
		t.Fatalf("Warm: %v", err)
	}
	if st := s.CacheStats(); st.Entries != 2 {
		t.Errorf("cache after Warm has %d entries, want 2 (a and b; c is gone)", st.Entries)
	}
	for k, want := range map[string]string{"a": "old-a", "b": "new-b", "c": "<absent>"} {
		if got := mustGet(t, s, k); got != want {
			t.Errorf("Get(%s) after Warm = %q, want %q", k, got, want)
		}
	}
	st := s.CacheStats()
	if st.Hits != 2 || st.HitRatio <= 0 {
		t.Errorf("cache stats after Warm and Get(a, b, c) = %+v, want 2 hits and a positive hit ratio", st)
	}
}

// A bad snapshot leaves the cache cold and is never an error.
func TestStoreWarmIgnoresBadSnapshot(t *testing.T) {
	tests := []struct {
		name     string
		snapshot string // "" for none
	}{
		{"missing", ""},
		{"garbage", "\x00\x01not json"},
		{"truncated", `{"version":1,"keys":["a","b`},
		{"unknown version", `{"version":99,"keys":["a"]}`},
		{"wrong shape", `{"version":1,"keys":"a"}`},
		{"empty", `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := newTestStore(t, dir)
			mustPut(t, s, "a", "1")
			if tt.snapshot != "" {
				if err := os.WriteFile(filepath.Join(dir, snapshotFile), []byte(tt.snapshot), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			fresh := newTestStore(t, dir)
			if err := fresh.Warm(t.Context()); err != nil {
				t.Errorf("Warm with a %s snapshot: %v, want nil", tt.name, err)
			}
			if st := fresh.CacheStats(); st.Entries != 0 {
				t.Errorf("cache after Warm with a %s snapshot has %d entries, want 0", tt.name, st.Entries)
			}
			if got := mustGet(t, fresh, "a"); got != "1" {
				t.Errorf("Get(a) after Warm with a %s snapshot = %q, want 1", tt.name, got)
			}
		})
	}
}

func TestStoreCloseCheckpoints(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(t.Context(), dir, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		mustPut(t, s, "k"+strconv.Itoa(i), strings.Repeat("v", 1000))
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, storeFile+"-wal")); err == nil && fi.Size() != 0 {
		t.Errorf("%s-wal is %d bytes after Close, want empty or gone", storeFile, fi.Size())
	}
	if _, _, err := s.Get(t.Context(), "k1"); !errors.Is(err, handlers.ErrUnavailable) {
		t.Errorf("Get after Close: %v, want an error matching handlers.ErrUnavailable", err)
	}

	db, err := sql.Open("sqlite", filepath.Join(dir, storeFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var check string
	if err := db.QueryRowContext(t.Context(), "PRAGMA integrity_check").Scan(&check); err != nil {
		t.Fatal(err)
	}
	if check != "ok" {
		t.Errorf("integrity_check after Close = %q, want ok", check)
	}
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM kv").Scan(&n); err != nil || n != 50 {
		t.Errorf("rows after Close = %d (%v), want 50", n, err)
	}
}

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
			c := newCache(tt.maxEntries, tt.maxBytes)
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
	c := newCache(10, 1<<20)
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
