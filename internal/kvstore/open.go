package kvstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-go/handoff/internal/datadir"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	sqlite3 "modernc.org/sqlite/lib"
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

// quickCheckMax is how many problems quick_check reports at most.
const quickCheckMax = 5

// openDatabase opens the database in dir, creating both if needed, after
// the checks that make a bad database fail the start rather than every
// request after it:
//
//   - The directory and every file of the database (kv.db, -wal, -shm)
//     must be private to this user or root (see package datadir).
//   - A missing kv.db is created whole, with its schema and mode 0600
//     (SQLite gives -wal and -shm the database's mode). So an existing
//     empty kv.db is never one this store made: it is refused, as a
//     database truncated by accident would otherwise start empty.
//   - PRAGMA quick_check must pass: a damaged file is refused with how to
//     recover it.
//   - SQLite must be able to write it. It opens a file it cannot write
//     read-only without an error; every write would fail.
func openDatabase(ctx context.Context, dir string, log zerolog.Logger) (*sql.DB, error) {
	if err := datadir.Prepare(dir); err != nil {
		return nil, err
	}
	path, err := filepath.Abs(filepath.Join(dir, storeFile))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	start := time.Now()
	created, err := ensureDatabase(ctx, path, log)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", storeDSN(path))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(storeMaxConns)
	db.SetMaxIdleConns(storeMaxConns)
	if err := checkDatabase(ctx, db, path); err != nil {
		db.Close()
		return nil, err
	}
	if !created {
		log.Info().Str("path", path).Float64("duration_ms", msSince(start)).Msg("database checked")
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

// ensureDatabase checks the files of the database at path, or creates it
// if it does not exist, and reports whether it did.
func ensureDatabase(ctx context.Context, path string, log zerolog.Logger) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		// A write-ahead log without its database holds commits that
		// SQLite would replay onto a new, empty one.
		if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
			return false, fmt.Errorf("database %s is missing, but its write-ahead log %s-wal holds %d bytes of it: "+
				"restore %s from a backup, or remove %s-wal and %s-shm to start with an empty store",
				path, path, wal.Size(), path, path, path)
		}
		created, cerr := createDatabase(ctx, path)
		if cerr != nil {
			return false, fmt.Errorf("create database %s: %w", path, cerr)
		}
		if created {
			ev := log.Info()
			if _, err := os.Stat(filepath.Join(filepath.Dir(path), snapshotFile)); err == nil {
				// A cache snapshot says a database was here.
				ev = log.Warn().Str("cache_snapshot", snapshotFile)
			}
			ev.Str("path", path).Msg("created new database")
			return true, nil
		}
		fi, err = os.Stat(path) // another process created it first
	}
	if err != nil {
		return false, fmt.Errorf("database: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("database %s is not a regular file (mode %v): move it aside", path, fi.Mode())
	}
	if err := datadir.CheckInfo("database file", path, fi); err != nil {
		return false, err
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := datadir.Check("database file", path+suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	if fi.Size() == 0 {
		return false, fmt.Errorf("database %s is empty (0 bytes), as one truncated by accident is, and the server will not start "+
			"on it with an empty store: restore it from a backup, or remove it (rm %s) to start with an empty store",
			path, path)
	}
	return false, nil
}

// createDatabase makes a new database at path, with its schema and mode
// 0600, in one step: it builds it under a temporary name and moves it to
// path only if path does not exist. It reports false if another process
// created path first.
func createDatabase(ctx context.Context, path string) (bool, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	f.Close()
	defer func() {
		for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
			os.Remove(tmp + suffix) // all gone once published
		}
	}()
	db, err := sql.Open("sqlite", storeDSN(tmp))
	if err != nil {
		return false, err
	}
	err = initSchema(ctx, db)
	// Closing the last connection folds the WAL into the file and
	// removes it; synchronous(FULL) syncs the file.
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = os.Link(tmp, path) // a filesystem without RENAME_NOREPLACE
	}
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return false, err
	}
	defer d.Close()
	return true, d.Sync()
}

// initSchema creates the schema of a new database.
func initSchema(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	if err := createSchema(ctx, tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit schema: %w", err)
	}
	return nil
}

// checkDatabase runs quick_check on db, then brings its schema up to date,
// proving on the way that SQLite can write it. It writes nothing if the
// schema is current, so that a new generation's start does not disturb
// the old one's cache.
func checkDatabase(ctx context.Context, db *sql.DB, path string) error {
	if err := quickCheck(ctx, db, path); err != nil {
		return err
	}
	tx, err := beginPatiently(ctx, db)
	if err != nil {
		return fmt.Errorf("open %s: begin: %w", path, err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("open %s: read schema version: %w", path, err)
	}
	switch {
	case v > storeSchemaVersion:
		return fmt.Errorf("open %s: schema version %d is newer than this binary's %d; run a newer binary", path, v, storeSchemaVersion)
	case v < storeSchemaVersion:
		if err = createSchema(ctx, tx); err == nil {
			err = tx.Commit()
		}
	default:
		// Rewrite the version and roll back: a write that commits nothing.
		_, err = tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", storeSchemaVersion))
	}
	if sqliteCode(err) == sqlite3.SQLITE_READONLY {
		return fmt.Errorf("database %s is read-only to this server (%v): make it and its -wal and -shm files "+
			"writable by the user the server runs as (chown and chmod 600 them), on a filesystem mounted "+
			"read-write, and not immutable (lsattr, chattr -i)", path, err)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	return nil
}

// startBusyWait bounds how long a starting store waits for the write lock
// that the serving generation's writers keep taking: several busy
// timeouts, since under a heavy write load one can pass without a turn,
// and a start that gives up fails the upgrade.
const startBusyWait = 6 * storeBusyTimeout

// beginPatiently begins an immediate transaction, trying again while the
// database is busy, up to startBusyWait.
func beginPatiently(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	deadline := time.Now().Add(startBusyWait)
	for {
		tx, err := db.BeginTx(ctx, nil)
		if err == nil || sqliteCode(err) != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return tx, err
		}
	}
}

// createSchema creates the schema in tx, and sets its version.
func createSchema(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, storeSchema); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", storeSchemaVersion)); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	return nil
}

// quickCheck runs PRAGMA quick_check, which reads every page and checks
// the structure of every b-tree (not that indexes match their tables).
// A damaged database is refused with how to recover it.
func quickCheck(ctx context.Context, db *sql.DB, path string) error {
	rows, err := db.QueryContext(ctx, fmt.Sprintf("PRAGMA quick_check(%d)", quickCheckMax))
	var problems []string
	if err == nil {
		for rows.Next() {
			var p string
			if err = rows.Scan(&p); err != nil {
				break
			}
			problems = append(problems, p)
		}
		if err == nil {
			err = rows.Err()
		}
		rows.Close()
	}
	switch {
	case err == nil && len(problems) == 1 && problems[0] == "ok":
		return nil
	case err == nil:
		return damaged(path, strings.Join(problems, "; "))
	}
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
		return damaged(path, err.Error())
	}
	return fmt.Errorf("check database %s: %w", path, err)
}

func damaged(path, problem string) error {
	dir, name := filepath.Split(path)
	return fmt.Errorf("database %s is damaged (%s), and the server will not start on it: stop every server that uses it, "+
		"then in %s move it and its -wal and -shm files aside (for f in %s %s-wal %s-shm; do mv $f damaged-$f; done), "+
		"and restore %s from a backup or recover what is readable (sqlite3 damaged-%s .recover | sqlite3 %s)",
		path, problem, dir, name, name, name, name, name, name)
}
