package kvstore

import (
	"database/sql"
	"testing"
)

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

// Every pooled connection gets the pragmas, not only the first.
func TestStorePragmasOnEveryConnection(t *testing.T) {
	s := OpenTest(t, t.TempDir())
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
