package kvstore

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"path/filepath"

	"github.com/handoff-go/handoff/internal/datadir"
	"github.com/rs/zerolog"
)

// storeSchemaVersion is kept in PRAGMA user_version, so that a binary
// never runs on a schema newer than it knows.
const storeSchemaVersion = 1

const storeSchema = `
CREATE TABLE IF NOT EXISTS kv (
	key   TEXT PRIMARY KEY,
	value BLOB NOT NULL,
	seq   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changelog (
	seq INTEGER PRIMARY KEY AUTOINCREMENT,
	key TEXT NOT NULL
);`

// openDatabase opens (creating if needed) the database in dir, which is
// created if it does not exist.
func openDatabase(ctx context.Context, dir string, log zerolog.Logger) (*sql.DB, error) {
	if err := datadir.Prepare(dir); err != nil {
		return nil, err
	}
	path, err := filepath.Abs(filepath.Join(dir, storeFile))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := sql.Open("sqlite", storeDSN(path))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(storeMaxConns)
	db.SetMaxIdleConns(storeMaxConns)
	if err := initSchema(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

// storeDSN sets every pragma in the DSN because database/sql opens
// connections on its own: each one must wait for the other generation's
// lock, use WAL, and sync every commit before it is acknowledged.
// _txlock=immediate takes the write lock at BEGIN, so a read-then-write
// transaction cannot fail with SQLITE_BUSY halfway, where the busy
// timeout does not help.
func storeDSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", storeBusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: path, OmitHost: true, RawQuery: q.Encode()}
	return u.String()
}

// initSchema creates the schema if absent. It writes nothing if the
// schema is current, so that a new generation's start does not disturb
// the old one's cache.
func initSchema(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case v > storeSchemaVersion:
		return fmt.Errorf("schema version %d is newer than this binary's %d; run a newer binary", v, storeSchemaVersion)
	case v < storeSchemaVersion:
		if _, err := tx.ExecContext(ctx, storeSchema); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", storeSchemaVersion)); err != nil {
			return fmt.Errorf("set schema version: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit schema: %w", err)
		}
	}
	return nil
}
