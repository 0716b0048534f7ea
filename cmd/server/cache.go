package main

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Bounds of the read cache. A value is at most handlers.MaxValueSize, so
// the byte bound, not the entry bound, is what limits a cache of big values.
const (
	MaxCacheEntries = 10000
	MaxCacheBytes   = 32 << 20
)

// cacheEntryOverhead is what an entry costs beyond its key and value bytes
// (list element, map slot, slice headers), counted so that many tiny
// entries cannot exceed MaxCacheBytes by much.
const cacheEntryOverhead = 96

// changelogScanMax is the most changelog rows one coherence check reads
// before it gives up and drops the whole cache: past this many changes,
// starting cold is cheaper than evicting key by key.
const changelogScanMax = MaxCacheEntries

// The cache is coherent across generations. Both generations run at once
// during a handoff, each with its own cache in front of the same kv.db, and
// neither may serve a value older than the last acknowledged write, even
// one the other process made. The protocol:
//
//  1. Every Put and Delete appends a changelog row in the same immediate
//     transaction as the change. Immediate transactions hold the database's
//     single write lock, so changelog seqs are assigned in commit order: a
//     reader that sees seq N committed sees every seq below it too.
//  2. The store keeps lastSeen, the highest changelog seq the cache has been
//     reconciled with, and dataVersion, the PRAGMA data_version read just
//     before that reconciliation. data_version, read on a connection that
//     never writes and never holds a transaction open between checks,
//     changes whenever any other connection, in any process, commits.
//  3. Before every lookup (Get), under s.mu: read data_version; if it
//     changed, read the changelog rows above lastSeen and evict every
//     cached entry older than a change to its key, then advance lastSeen.
//     Invariant: every commit with a seq above lastSeen happened after the
//     dataVersion read, so the next check sees data_version changed. (The
//     changelog is read after data_version, so it holds every commit that
//     data_version reflected.) Checks are serialized, never shared: a
//     check that began before a write committed cannot serve a Get that
//     began after the write was acknowledged.
//  4. An entry enters the cache only from a read that also returns the
//     changelog's high-water mark H of the same snapshot (one SQL
//     statement, or the writer's own seq after its commit), and only while
//     lastSeen <= H. Changes up to H are in the value already; changes
//     above H are above lastSeen, so step 3 will see and evict them. If
//     lastSeen > H, a check has already processed changes the value may
//     lack, so the value is dropped instead of cached. Without this rule a
//     slow miss could cache a value just after a check evicted the key.
//  5. An entry never replaces one with a higher seq, so two readers that
//     raced cannot leave the older value behind.
//
// Hence a Get that starts after a write was acknowledged runs its check
// after that commit, finds lastSeen at or above the write's seq, and every
// entry it can hit reflects all changes up to lastSeen.
//
// Dropping the whole cache is always correct, and is the answer to every
// case the steps above do not cover: the changelog is trimmed to its last
// changelogKeep rows, so a check that finds a gap after lastSeen (rows it
// needed were trimmed) drops everything, as it does when it is more than
// changelogScanMax rows behind or when the check itself fails (it then
// starts over as openStore does, with a new watch connection).

// cacheEntry is one cached value and the seq of the change that wrote it.
type cacheEntry struct {
	key   string
	value []byte
	seq   int64
}

func (e *cacheEntry) size() int64 {
	return int64(len(e.key) + len(e.value) + cacheEntryOverhead)
}

// cache is a least-recently-used map of values bounded by entry count and
// bytes. It knows nothing of coherence (see above) and is not safe for
// concurrent use: the store guards it with its mutex.
type cache struct {
	maxEntries int
	maxBytes   int64
	bytes      int64
	order      *list.List // of *cacheEntry, most recently used first
	entries    map[string]*list.Element
}

func newCache(maxEntries int, maxBytes int64) *cache {
	return &cache{
		maxEntries: maxEntries,
		maxBytes:   maxBytes,
		order:      list.New(),
		entries:    make(map[string]*list.Element),
	}
}

// get returns the cached value of key and marks it recently used.
func (c *cache) get(key string) ([]byte, bool) {
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
func (c *cache) add(key string, value []byte, seq int64) {
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
func (c *cache) evictOlder(key string, seq int64) {
	if el, ok := c.entries[key]; ok && el.Value.(*cacheEntry).seq < seq {
		c.remove(el)
	}
}

func (c *cache) remove(el *list.Element) {
	e := c.order.Remove(el).(*cacheEntry)
	delete(c.entries, e.key)
	c.bytes -= e.size()
}

// clear drops every entry.
func (c *cache) clear() {
	c.order.Init()
	clear(c.entries)
	c.bytes = 0
}

// keys returns the cached keys, most recently used first.
func (c *cache) keys() []string {
	ks := make([]string, 0, c.order.Len())
	for el := c.order.Front(); el != nil; el = el.Next() {
		ks = append(ks, el.Value.(*cacheEntry).key)
	}
	return ks
}

// CacheStats describes the read cache since the store was opened.
type CacheStats struct {
	Hits    uint64 `json:"hits"`
	Misses  uint64 `json:"misses"`
	Entries int    `json:"entries"`
	Bytes   int64  `json:"bytes"`
	// HitRatio is Hits/(Hits+Misses), or 0 before the first lookup.
	HitRatio float64 `json:"hit_ratio"`
}

// CacheStats returns the cache's counters.
func (s *store) CacheStats() CacheStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := CacheStats{Hits: s.hits, Misses: s.misses, Entries: s.cache.order.Len(), Bytes: s.cache.bytes}
	if n := s.hits + s.misses; n > 0 {
		st.HitRatio = float64(s.hits) / float64(n)
	}
	return st
}

// syncCache is step 3 of the protocol above. s.mu must be held. If the
// check fails, it starts over with a new watch connection and an empty
// cache, which is always correct.
func (s *store) syncCache(ctx context.Context) error {
	// A cancelled request must not interrupt the watch connection halfway:
	// database/sql may then retire it. The queries are short; the busy
	// timeout bounds them.
	ctx = context.WithoutCancel(ctx)
	if s.watch != nil {
		err := s.reconcile(ctx)
		if err == nil {
			return nil
		}
		s.log.Warn().Err(err).Int("entries", s.cache.order.Len()).Msg("cache check failed; cache dropped")
		s.watch.Close()
		s.watch = nil
		s.cache.clear()
	}
	return s.startWatch(ctx)
}

// startWatch reserves the watch connection and starts the coherence state
// from the current end of the changelog, with an empty cache. s.mu must be
// held (or s not yet shared).
func (s *store) startWatch(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("reserve watch connection: %w", err)
	}
	// data_version first, then the changelog: a commit in between is above
	// lastSeen and changes data_version, as the invariant needs.
	var dv, hi int64
	if err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&dv); err != nil {
		conn.Close()
		return fmt.Errorf("read data_version: %w", err)
	}
	if err := conn.QueryRowContext(ctx, "SELECT COALESCE(MAX(seq), 0) FROM changelog").Scan(&hi); err != nil {
		conn.Close()
		return fmt.Errorf("read changelog: %w", err)
	}
	s.watch, s.dataVersion, s.lastSeen = conn, dv, hi
	s.cache.clear()
	return nil
}

// reconcile evicts what changed since the last check.
func (s *store) reconcile(ctx context.Context) error {
	var dv int64
	if err := s.watch.QueryRowContext(ctx, "PRAGMA data_version").Scan(&dv); err != nil {
		return fmt.Errorf("read data_version: %w", err)
	}
	if dv == s.dataVersion {
		return nil
	}
	rows, err := s.watch.QueryContext(ctx,
		"SELECT seq, key FROM changelog WHERE seq > ? ORDER BY seq LIMIT ?", s.lastSeen, changelogScanMax+1)
	if err != nil {
		return fmt.Errorf("read changelog: %w", err)
	}
	defer rows.Close()
	type change struct {
		seq int64
		key string
	}
	var changes []change
	for rows.Next() {
		var c change
		if err := rows.Scan(&c.seq, &c.key); err != nil {
			return fmt.Errorf("read changelog: %w", err)
		}
		changes = append(changes, c)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read changelog: %w", err)
	}
	rows.Close() // end the read transaction before the next statement

	switch {
	case len(changes) == 0:
		// A commit that changed no key, such as the other generation
		// creating the schema.
	case changes[0].seq != s.lastSeen+1 || len(changes) > changelogScanMax:
		// Changes this cache has not seen were trimmed, or there are too
		// many to be worth reading. Starting cold is always correct.
		var hi int64
		if err := s.watch.QueryRowContext(ctx, "SELECT COALESCE(MAX(seq), 0) FROM changelog").Scan(&hi); err != nil {
			return fmt.Errorf("read changelog: %w", err)
		}
		s.log.Debug().Int64("last_seen", s.lastSeen).Int64("seq", hi).Int("entries", s.cache.order.Len()).Msg("cache dropped")
		s.cache.clear()
		s.lastSeen = hi
	default:
		for _, c := range changes {
			s.cache.evictOlder(c.key, c.seq)
		}
		s.lastSeen = changes[len(changes)-1].seq
	}
	s.dataVersion = dv
	return nil
}

// cacheAdd is step 4 of the protocol above: it caches value, read as of
// change seq in a snapshot whose changelog high-water mark was hi, and
// reports whether the protocol allowed it.
func (s *store) cacheAdd(key string, value []byte, seq, hi int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if hi < s.lastSeen {
		return false
	}
	s.cache.add(key, value, seq)
	return true
}

// cacheSnapshot is the file PersistCache writes and Warm reads. It holds
// keys only: a value in it could be stale by the time it is read (the
// other generation keeps writing), so Warm reads values from the database.
type cacheSnapshot struct {
	Version int      `json:"version"`
	Keys    []string `json:"keys"` // most recently used first
}

const cacheSnapshotVersion = 1

// warmBatch is how many keys Warm reads per statement.
const warmBatch = 500

// PersistCache writes the cached keys to cache.snapshot in the data
// directory, for the next generation's Warm. It replaces the file
// atomically, so a crash or the other generation's PersistCache never
// leaves a torn one. It works before or after Close.
func (s *store) PersistCache(ctx context.Context) error {
	start := time.Now()
	s.mu.Lock()
	keys := s.cache.keys()
	s.mu.Unlock()
	b, err := json.Marshal(cacheSnapshot{Version: cacheSnapshotVersion, Keys: keys})
	if err != nil {
		return fmt.Errorf("persist cache: %w", err)
	}
	if err := writeFileAtomic(ctx, filepath.Join(s.dir, snapshotFile), b); err != nil {
		return fmt.Errorf("persist cache: %w", err)
	}
	s.log.Info().Int("keys", len(keys)).Int("bytes", len(b)).Float64("duration_ms", msSince(start)).Msg("cache persisted")
	return nil
}

// writeFileAtomic writes b to path through a synced temporary file in the
// same directory and a rename, then syncs the directory so that the
// rename survives a crash.
func writeFileAtomic(ctx context.Context, path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Warm fills the cache with the keys of cache.snapshot, values read from
// the database. A missing or corrupt snapshot leaves the cache cold and is
// not an error; an error is a database failure, after which the cache is
// still correct, only colder. Warm may run while the store serves.
func (s *store) Warm(ctx context.Context) error {
	start := time.Now()
	path := filepath.Join(s.dir, snapshotFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		s.log.Info().Str("path", path).Msg("no cache snapshot; cache starts cold")
		return nil
	}
	if err != nil {
		s.log.Warn().Err(err).Str("path", path).Msg("cache snapshot ignored")
		return nil
	}
	var snap cacheSnapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		s.log.Warn().Err(err).Str("path", path).Msg("cache snapshot ignored: corrupt")
		return nil
	}
	if snap.Version != cacheSnapshotVersion {
		s.log.Warn().Int("version", snap.Version).Str("path", path).Msg("cache snapshot ignored: unknown version")
		return nil
	}
	keys := snap.Keys
	if len(keys) > MaxCacheEntries {
		keys = keys[:MaxCacheEntries]
	}
	// Least recently used first, so that the most recently used ends up
	// at the front of the LRU.
	n := 0
	for end := len(keys); end > 0; end -= warmBatch {
		batch := keys[max(0, end-warmBatch):end]
		found, err := s.warmBatch(ctx, batch)
		if err != nil {
			return fmt.Errorf("warm cache: %w", err)
		}
		n += found
	}
	s.log.Info().Int("count", n).Int("snapshot_keys", len(snap.Keys)).
		Float64("duration_ms", msSince(start)).Msg("cache warmed")
	return nil
}

// warmBatch caches the values of keys (least recently used first) and
// returns how many it cached.
func (s *store) warmBatch(ctx context.Context, keys []string) (int, error) {
	args := make([]any, len(keys))
	for i, k := range keys {
		args[i] = k
	}
	// One statement is one snapshot: the values, seqs and high-water mark
	// agree, as cacheAdd needs.
	rows, err := s.db.QueryContext(ctx,
		"SELECT key, value, seq, (SELECT COALESCE(MAX(seq), 0) FROM changelog) FROM kv WHERE key IN (?"+
			strings.Repeat(", ?", len(keys)-1)+")", args...)
	if err != nil {
		return 0, classifyErr(err)
	}
	defer rows.Close()
	type row struct {
		value   []byte
		seq, hi int64
	}
	got := make(map[string]row, len(keys))
	for rows.Next() {
		var (
			k string
			r row
		)
		if err := rows.Scan(&k, &r.value, &r.seq, &r.hi); err != nil {
			return 0, classifyErr(err)
		}
		if r.value == nil {
			r.value = []byte{}
		}
		got[k] = r
	}
	if err := rows.Err(); err != nil {
		return 0, classifyErr(err)
	}
	n := 0
	for i := len(keys) - 1; i >= 0; i-- {
		if r, ok := got[keys[i]]; ok && s.cacheAdd(keys[i], r.value, r.seq, r.hi) {
			n++
		}
	}
	return n, nil
}
