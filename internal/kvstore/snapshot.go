package kvstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-go/handoff/internal/atomicfile"
	"github.com/handoff-go/handoff/internal/datadir"
)

// cacheSnapshot is the file PersistCache writes and Warm reads. It holds
// keys only: a value in it could be stale by the time it is read (the
// other generation keeps writing), so Warm reads values from the database.
type cacheSnapshot struct {
	Version int      `json:"version"`
	Keys    []string `json:"keys"` // most recently used first
}

const cacheSnapshotVersion = 1

// Bounds of Warm.
const (
	// warmBatch is how many keys Warm reads per statement.
	warmBatch = 500
	// maxSnapshotBytes is the largest snapshot Warm reads: several times
	// the largest that PersistCache writes (MaxCacheEntries keys of at
	// most 512 bytes, JSON-escaped).
	maxSnapshotBytes = 64 << 20
	// warmTimeout bounds Warm. A cache that is not warm is only colder.
	warmTimeout = time.Minute
)

// PersistCache writes the cached keys to cache.snapshot in the data
// directory, for the next generation's Warm. It replaces the file
// atomically, so a crash or the other generation's PersistCache never
// leaves a torn one. It works before or after Close.
func (s *Store) PersistCache(ctx context.Context) error {
	start := time.Now()
	s.mu.Lock()
	keys := s.cache.keys()
	s.mu.Unlock()
	b, err := json.Marshal(cacheSnapshot{Version: cacheSnapshotVersion, Keys: keys})
	if err != nil {
		return fmt.Errorf("persist cache: %w", err)
	}
	if err := atomicfile.WriteFile(ctx, filepath.Join(s.dir, snapshotFile), b, 0o600); err != nil {
		return fmt.Errorf("persist cache: %w", err)
	}
	s.log.Info().Int("keys", len(keys)).Int("bytes", len(b)).Float64("duration_ms", msSince(start)).Msg("cache persisted")
	return nil
}

// HotKeys returns the cached keys, most recently used first, encoded as a
// snapshot: the state a generation hands its successor (WarmFrom), with no
// file in between.
func (s *Store) HotKeys() ([]byte, error) {
	s.mu.Lock()
	keys := s.cache.keys()
	s.mu.Unlock()
	return json.Marshal(cacheSnapshot{Version: cacheSnapshotVersion, Keys: keys})
}

// WarmFrom fills the cache from the keys a previous generation handed over
// (HotKeys), values read from the database. Unlike Warm, which treats a
// damaged file as a cold start, it refuses state it cannot read: the
// generation that got it fails to start, and the old one serves on.
func (s *Store) WarmFrom(ctx context.Context, state []byte) error {
	start := time.Now()
	var snap cacheSnapshot
	dec := json.NewDecoder(bytes.NewReader(state))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&snap); err != nil {
		return fmt.Errorf("handed-over cache state: %w", err)
	}
	if snap.Version != cacheSnapshotVersion {
		return fmt.Errorf("handed-over cache state: version %d, want %d", snap.Version, cacheSnapshotVersion)
	}
	n, err := s.warmKeys(ctx, snap.Keys)
	if err != nil {
		return err
	}
	s.log.Info().Int("count", n).Int("handed_keys", len(snap.Keys)).Str("from", "previous generation").
		Float64("duration_ms", msSince(start)).Msg("cache warmed")
	return nil
}

// Warm fills the cache with the keys of cache.snapshot, values read from
// the database. A missing or corrupt snapshot leaves the cache cold and is
// not an error; an error is a database failure, after which the cache is
// still correct, only colder. Warm may run while the store serves.
func (s *Store) Warm(ctx context.Context) error {
	start := time.Now()
	path := filepath.Join(s.dir, snapshotFile)
	ctx, cancel := context.WithTimeout(ctx, warmTimeout)
	defer cancel()
	// Only a regular file: a FIFO or a device at the path would block a
	// plain open or read forever.
	b, _, err := datadir.ReadFile(ctx, path, maxSnapshotBytes)
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
	n, err := s.warmKeys(ctx, snap.Keys)
	if err != nil {
		return err
	}
	s.log.Info().Int("count", n).Int("snapshot_keys", len(snap.Keys)).Str("from", "snapshot").
		Float64("duration_ms", msSince(start)).Msg("cache warmed")
	return nil
}

// warmKeys caches the values of keys, most recently used first, and
// returns how many it cached.
func (s *Store) warmKeys(ctx context.Context, keys []string) (int, error) {
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
			return n, fmt.Errorf("warm cache: %w", err)
		}
		n += found
	}
	return n, nil
}

// warmBatch caches the values of keys (least recently used first) and
// returns how many it cached.
func (s *Store) warmBatch(ctx context.Context, keys []string) (int, error) {
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
