package kvstore

import (
	"context"
	"fmt"
)

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
// starts over as Open does, with a new watch connection).

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
func (s *Store) CacheStats() CacheStats {
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
func (s *Store) syncCache(ctx context.Context) error {
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
func (s *Store) startWatch(ctx context.Context) error {
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
func (s *Store) reconcile(ctx context.Context) error {
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
func (s *Store) cacheAdd(key string, value []byte, seq, hi int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if hi < s.lastSeen {
		return false
	}
	s.cache.add(key, value, seq)
	return true
}
