package kvstore

import (
	"errors"
	"fmt"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors that pass on their own: a caller may retry. Both have a method
// Unavailable() that returns true, which is how the HTTP handlers, which
// do not import this package, answer them 503 rather than 500.
const (
	// ErrClosed is returned by every call after Close: the generation is
	// about to exit, and the next one serves.
	ErrClosed = storeError("store is closed")
	// ErrBusy marks an error of a database that the other generation held
	// locked past the busy timeout.
	ErrBusy = storeError("database is busy")
)

type storeError string

func (e storeError) Error() string { return string(e) }

// Unavailable reports that the error passes on its own.
func (e storeError) Unavailable() bool { return true }

// classifyErr marks err as ErrBusy when SQLite gave up waiting for a lock.
func classifyErr(err error) error {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %w", ErrBusy, err)
	}
	return err
}

// sqliteCode is the primary SQLite result code in err's chain, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}
