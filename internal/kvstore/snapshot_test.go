package kvstore_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/kvstore"
	"golang.org/x/sys/unix"
)

func TestStorePersistAndWarm(t *testing.T) {
	dir := t.TempDir()
	old := kvstore.OpenTest(t, dir)
	keys := []string{"a", "b", "c"}
	for _, k := range keys {
		kvstore.MustPut(t, old, k, "old-"+k)
	}
	if err := old.PersistCache(t.Context()); err != nil {
		t.Fatalf("PersistCache: %v", err)
	}
	// A write after the snapshot: Warm must read values from the database.
	kvstore.MustPut(t, old, "b", "new-b")
	if _, err := old.Delete(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s := kvstore.OpenTest(t, dir)
	if err := s.Warm(t.Context()); err != nil {
		t.Fatalf("Warm: %v", err)
	}
	if st := s.CacheStats(); st.Entries != 2 {
		t.Errorf("cache after Warm has %d entries, want 2 (a and b; c is gone)", st.Entries)
	}
	for k, want := range map[string]string{"a": "old-a", "b": "new-b", "c": "<absent>"} {
		if got := kvstore.MustGet(t, s, k); got != want {
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
			s := kvstore.OpenTest(t, dir)
			kvstore.MustPut(t, s, "a", "1")
			if tt.snapshot != "" {
				if err := os.WriteFile(filepath.Join(dir, "cache.snapshot"), []byte(tt.snapshot), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			fresh := kvstore.OpenTest(t, dir)
			if err := fresh.Warm(t.Context()); err != nil {
				t.Errorf("Warm with a %s snapshot: %v, want nil", tt.name, err)
			}
			if st := fresh.CacheStats(); st.Entries != 0 {
				t.Errorf("cache after Warm with a %s snapshot has %d entries, want 0", tt.name, st.Entries)
			}
			if got := kvstore.MustGet(t, fresh, "a"); got != "1" {
				t.Errorf("Get(a) after Warm with a %s snapshot = %q, want 1", tt.name, got)
			}
		})
	}
}

// Issue 10 item 12: a FIFO at the snapshot path blocked the warm-up
// forever. Only a regular file of bounded size is read.
func TestWarmReadsOnlyRegularFiles(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T, path string)
	}{
		{"FIFO", func(t *testing.T, path string) {
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"file larger than the bound", func(t *testing.T, path string) {
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(1 << 30); err != nil { // sparse: no disk used
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := kvstore.OpenTest(t, dir)
			kvstore.MustPut(t, s, "a", "1")
			path := filepath.Join(dir, "cache.snapshot")
			tt.make(t, path)
			fresh := kvstore.OpenTest(t, dir)
			done := make(chan error, 1)
			go func() { done <- fresh.Warm(t.Context()) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				// Unblock it: a writer that opens and closes gives EOF.
				if w, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					w.Close()
				}
				<-done
				t.Fatalf("Warm with a %s at the snapshot path blocked", tt.name)
			}
			if err != nil {
				t.Errorf("Warm with a %s at the snapshot path: %v, want nil (a cold cache)", tt.name, err)
			}
			if st := fresh.CacheStats(); st.Entries != 0 {
				t.Errorf("cache after Warm with a %s snapshot has %d entries, want 0", tt.name, st.Entries)
			}
		})
	}
}
