package kvstore

import (
	"context"
	"testing"

	"github.com/handoff-go/handoff/internal/testkit"
)

// Helpers for the tests of this package and of kvstore_test.

// OpenTest opens a store in dir that is closed when the test ends.
// Two stores on one dir stand for two generations: SQLite treats the
// connections of two *sql.DB in one process as it treats two processes.
func OpenTest(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{Dir: dir, Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func MustPut(t *testing.T, s *Store, key, value string) {
	t.Helper()
	if _, err := s.Put(t.Context(), key, []byte(value)); err != nil {
		t.Fatalf("Put(%q, %q): %v", key, value, err)
	}
}

// MustGet returns key's value, or "<absent>".
func MustGet(t *testing.T, s *Store, key string) string {
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
