// Package kvstore is the reference server's key-value store: a SQLite
// database in the server's data directory with a read cache in front of
// it. Two generations of the server use the same database at once during
// a handoff; coherence.go explains why neither ever serves a stale value.
//
// Open refuses a database it cannot trust: files that another user can
// change, a file SQLite could open only read-only, an empty or damaged
// file (open.go). A Store's methods are safe for concurrent use. Close
// must be the last call but PersistCache, which a generation runs during
// its cleanup, for the next one's Warm.
//
// Errors that pass on their own, a database locked by the other
// generation past the busy timeout (ErrBusy) and a closed store
// (ErrClosed), have a method Unavailable() that returns true, so that a
// caller can tell them from a failure without importing this package.
package kvstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Files of the store in its data directory.
const (
	storeFile    = "kv.db"
	snapshotFile = "cache.snapshot"
)

// Store settings.
const (
	// storeBusyTimeout is how long a statement waits for the other
	// generation's write lock before it fails with SQLITE_BUSY.
	storeBusyTimeout = 5 * time.Second
	// storeMaxConns bounds the pool; one connection is the cache's watch.
	storeMaxConns = 4
	// changelogKeep is how many changelog rows are kept. A cache that
	// falls further behind than this drops all its entries.
	changelogKeep = 100000
	// changelogTrimEvery makes one write in this many trim the changelog.
	changelogTrimEvery = 1000
)

// Options configure Open.
type Options struct {
	// Dir is the data directory. It is created (mode 0700) if it does not
	// exist, and must be private to this process's user (or root's).
	// Required.
	Dir string
	// Logger is the store's component logger. The zero Logger logs
	// nothing.
	Logger zerolog.Logger
}

// Store is the key-value store the reference server's /kv routes serve.
type Store struct {
	db  *sql.DB
	dir string
	log zerolog.Logger

	mu sync.Mutex // guards the fields below; held while watch runs a query
	// watch is a connection reserved for the coherence check: it never
	// writes, so its PRAGMA data_version counts every other commit. Nil
	// after a failed check, until the next check starts over.
	watch       *sql.Conn
	dataVersion int64 // as read by the last coherence check
	lastSeen    int64 // highest changelog seq the cache is reconciled with
	cache       *lru
	hits        uint64
	misses      uint64
	closed      bool
}

// Open opens the store in o.Dir, creating the directory and the database
// if needed. It fails, with an error that says what to do, if the
// database is not private to this user, not writable, empty or damaged.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("open store: no data directory")
	}
	db, err := openDatabase(ctx, o.Dir, o.Logger)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, dir: o.Dir, log: o.Logger, cache: newLRU(MaxCacheEntries, MaxCacheBytes)}
	if err := s.startWatch(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	return s, nil
}

// Get returns the value of key, from the cache when it is known to be
// current, else from the database.
func (s *Store) Get(ctx context.Context, key string) ([]byte, bool, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, false, fmt.Errorf("get %q: %w", key, ErrClosed)
	}
	if err := s.syncCache(ctx); err != nil {
		s.mu.Unlock()
		return nil, false, fmt.Errorf("get %q: %w", key, classifyErr(err))
	}
	if v, ok := s.cache.get(key); ok {
		s.hits++
		v = cloneValue(v)
		s.mu.Unlock()
		return v, true, nil
	}
	s.misses++
	s.mu.Unlock()

	// One statement is one snapshot: the value, its seq and the changelog's
	// high-water mark agree, as cacheAdd needs.
	var (
		value   []byte
		seq, hi int64
	)
	err := s.db.QueryRowContext(ctx,
		"SELECT value, seq, (SELECT COALESCE(MAX(seq), 0) FROM changelog) FROM kv WHERE key = ?", key).
		Scan(&value, &seq, &hi)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("get %q: %w", key, classifyErr(err))
	}
	if value == nil {
		value = []byte{} // an empty value exists; nil would read as absent to some callers
	}
	s.cacheAdd(key, cloneValue(value), seq, hi)
	return value, true, nil
}

// Put sets key to value and reports whether key is new. It returns only
// once the change is committed and synced.
func (s *Store) Put(ctx context.Context, key string, value []byte) (bool, error) {
	if value == nil {
		value = []byte{} // nil binds as NULL
	}
	var created bool
	seq, err := s.write(ctx, key, func(tx *sql.Tx, seq int64) (bool, error) {
		res, err := tx.ExecContext(ctx, "UPDATE kv SET value = ?, seq = ? WHERE key = ?", value, seq, key)
		if err != nil {
			return false, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return false, err
		}
		if n == 0 {
			created = true
			if _, err := tx.ExecContext(ctx, "INSERT INTO kv (key, value, seq) VALUES (?, ?, ?)", key, value, seq); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return false, fmt.Errorf("put %q: %w", key, err)
	}
	// The writer's own seq is the high-water mark of its commit.
	s.cacheAdd(key, cloneValue(value), seq, seq)
	return created, nil
}

// Delete removes key and reports whether it existed. It returns only once
// the change is committed and synced.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	seq, err := s.write(ctx, key, func(tx *sql.Tx, seq int64) (bool, error) {
		res, err := tx.ExecContext(ctx, "DELETE FROM kv WHERE key = ?", key)
		if err != nil {
			return false, err
		}
		n, err := res.RowsAffected()
		return n > 0, err
	})
	if err != nil {
		return false, fmt.Errorf("delete %q: %w", key, err)
	}
	if seq == 0 {
		return false, nil
	}
	s.mu.Lock()
	s.cache.evictOlder(key, seq)
	s.mu.Unlock()
	return true, nil
}

// write runs change in one immediate transaction together with the
// changelog row it is given the seq of. change reports whether it changed
// anything; if not, nothing is committed and write returns seq 0.
func (s *Store) write(ctx context.Context, key string, change func(tx *sql.Tx, seq int64) (bool, error)) (int64, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, classifyErr(fmt.Errorf("begin: %w", err))
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "INSERT INTO changelog (key) VALUES (?)", key)
	if err != nil {
		return 0, classifyErr(fmt.Errorf("append changelog: %w", err))
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("append changelog: %w", err)
	}
	changed, err := change(tx, seq)
	if err != nil {
		return 0, classifyErr(fmt.Errorf("write: %w", err))
	}
	if !changed {
		return 0, nil // the rollback also takes back the seq
	}
	if seq%changelogTrimEvery == 0 {
		if _, err := tx.ExecContext(ctx, "DELETE FROM changelog WHERE seq <= ?", seq-changelogKeep); err != nil {
			return 0, classifyErr(fmt.Errorf("trim changelog: %w", err))
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, classifyErr(fmt.Errorf("commit: %w", err))
	}
	return seq, nil
}

// List returns up to limit keys that start with prefix and sort after
// after, in byte order, and the cursor of the next page ("" if none). It
// reads the database, not the cache, so it is always current.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) ([]string, string, error) {
	if limit <= 0 {
		return nil, "", fmt.Errorf("list: limit %d is not positive", limit)
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, "", fmt.Errorf("list: %w", ErrClosed)
	}
	// One lower bound, the tighter of the two, so that SQLite seeks to it
	// in the key index. SQLite compares TEXT bytewise, as Go compares
	// strings, so pages follow Go's order.
	q, lo := "SELECT key FROM kv WHERE key >= ?", prefix
	if after >= prefix {
		q, lo = "SELECT key FROM kv WHERE key > ?", after
	}
	args := []any{lo}
	if hi, ok := prefixEnd(prefix); ok {
		q += " AND key < ?"
		args = append(args, hi)
	}
	q += " ORDER BY key LIMIT ?"
	args = append(args, limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list: %w", classifyErr(err))
	}
	defer rows.Close()
	keys := []string{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, "", fmt.Errorf("list: %w", classifyErr(err))
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list: %w", classifyErr(err))
	}
	var next string
	if len(keys) > limit {
		keys = keys[:limit]
		next = keys[limit-1]
	}
	return keys, next, nil
}

// prefixEnd returns the least string greater than every string that starts
// with prefix, or false if there is none (prefix is empty or all 0xff).
func prefixEnd(prefix string) (string, bool) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// Close checkpoints the WAL into the database file and closes it. The
// other generation may still have the database open; then the checkpoint
// may be partial, which costs it nothing.
func (s *Store) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	start := time.Now()
	var busy, walFrames, checkpointed int
	// PASSIVE: a checkpoint that waited for writers (FULL, TRUNCATE) would
	// hold off, for as long as it runs, the writes of the generation that
	// took over, which then time out as busy. At a full stop this is the
	// last connection, and closing it folds the WAL in and removes it.
	cerr := s.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &walFrames, &checkpointed)
	if cerr != nil {
		cerr = fmt.Errorf("checkpoint: %w", cerr)
	} else {
		// busy means the other generation still reads or writes; the WAL
		// is then left for it, or the last to close, to fold in.
		s.log.Info().Bool("busy", busy != 0).Int("wal_frames", walFrames).Int("checkpointed", checkpointed).
			Float64("duration_ms", msSince(start)).Msg("wal checkpointed")
	}
	var werr error
	if s.watch != nil {
		werr = s.watch.Close()
		s.watch = nil
	}
	if err := errors.Join(cerr, werr, s.db.Close()); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	s.log.Info().Float64("duration_ms", msSince(start)).Msg("store closed")
	return nil
}

// cloneValue copies b, so that no caller shares a slice with the cache.
func cloneValue(b []byte) []byte {
	return append([]byte{}, b...)
}

// msSince is the time since start in milliseconds, as log fields have it.
func msSince(start time.Time) float64 {
	return float64(time.Since(start)) / float64(time.Millisecond)
}
