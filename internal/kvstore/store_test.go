package kvstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/internal/testkit"
)

func TestStoreCRUD(t *testing.T) {
	s := kvstore.OpenTest(t, t.TempDir())
	ctx := t.Context()
	steps := []struct {
		op, key, value string
		want           string // Get's value, or "<absent>"; Put's and Delete's bool
	}{
		{"get", "a", "", "<absent>"},
		{"put", "a", "v1", "true"},
		{"get", "a", "", "v1"},
		{"get", "a", "", "v1"}, // from the cache
		{"put", "a", "v2", "false"},
		{"get", "a", "", "v2"},
		{"put", "empty", "", "true"},
		{"get", "empty", "", ""},
		{"delete", "a", "", "true"},
		{"get", "a", "", "<absent>"},
		{"delete", "a", "", "false"},
		{"put", "a", "v3", "true"},
		{"get", "a", "", "v3"},
		{"put", "ключ/✓", "ü", "true"},
		{"get", "ключ/✓", "", "ü"},
	}
	for i, st := range steps {
		var got string
		switch st.op {
		case "get":
			v, ok, err := s.Get(ctx, st.key)
			if err != nil {
				t.Fatalf("step %d: Get(%q): %v", i, st.key, err)
			}
			got = "<absent>"
			if ok {
				got = string(v)
			}
		case "put":
			created, err := s.Put(ctx, st.key, []byte(st.value))
			if err != nil {
				t.Fatalf("step %d: Put(%q): %v", i, st.key, err)
			}
			got = strconv.FormatBool(created)
		case "delete":
			existed, err := s.Delete(ctx, st.key)
			if err != nil {
				t.Fatalf("step %d: Delete(%q): %v", i, st.key, err)
			}
			got = strconv.FormatBool(existed)
		}
		if got != st.want {
			t.Errorf("step %d: %s(%q) = %q, want %q", i, st.op, st.key, got, st.want)
		}
	}
}

// A caller that changes the slice it got or gave cannot change the store.
func TestStoreValuesAreCopies(t *testing.T) {
	s := kvstore.OpenTest(t, t.TempDir())
	v := []byte("abc")
	if _, err := s.Put(t.Context(), "k", v); err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	got, _, _ := s.Get(t.Context(), "k")
	got[1] = 'Y'
	if g := kvstore.MustGet(t, s, "k"); g != "abc" {
		t.Errorf("Get(k) after the caller changed its slices = %q, want abc", g)
	}
}

func TestStoreList(t *testing.T) {
	s := kvstore.OpenTest(t, t.TempDir())
	keys := []string{"a", "a/1", "a/2", "a/3", "ab", "b", "b/1", "z\u00ff", "z\u0100", "é"}
	for _, k := range keys {
		kvstore.MustPut(t, s, k, "v")
	}
	tests := []struct {
		prefix, after string
		limit         int
		want          []string
		wantNext      string
	}{
		{"", "", 100, keys, ""}, // keys are in byte order already
		{"", "", 3, []string{"a", "a/1", "a/2"}, "a/2"},
		{"", "a/2", 3, []string{"a/3", "ab", "b"}, "b"},
		{"", "z\u0100", 3, []string{"é"}, ""},
		{"", "é", 3, []string{}, ""},
		{"a/", "", 2, []string{"a/1", "a/2"}, "a/2"},
		{"a/", "a/2", 2, []string{"a/3"}, ""},
		{"a/", "a/3", 2, []string{}, ""},
		{"a", "", 10, []string{"a", "a/1", "a/2", "a/3", "ab"}, ""},
		{"a", "0", 10, []string{"a", "a/1", "a/2", "a/3", "ab"}, ""}, // after sorts before prefix
		{"b", "a/2", 10, []string{"b", "b/1"}, ""},
		{"b", "c", 10, []string{}, ""}, // after sorts after the prefix's keys
		{"z", "", 10, []string{"z\u00ff", "z\u0100"}, ""},
		{"z\u00ff", "", 10, []string{"z\u00ff"}, ""},
		{"nope", "", 10, []string{}, ""},
		{"a/3", "", 1, []string{"a/3"}, ""}, // a full last page has no next
	}
	for _, tt := range tests {
		name := fmt.Sprintf("prefix=%q after=%q limit=%d", tt.prefix, tt.after, tt.limit)
		t.Run(name, func(t *testing.T) {
			got, next, err := s.List(t.Context(), tt.prefix, tt.after, tt.limit)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if !slices.Equal(got, tt.want) || next != tt.wantNext {
				t.Errorf("List(%s) = %q, next %q; want %q, next %q", name, got, next, tt.want, tt.wantNext)
			}
		})
	}

	// Walking page by page sees every key once, in order.
	var all []string
	after := ""
	for range len(keys) + 2 {
		page, next, err := s.List(t.Context(), "", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(all, keys) {
		t.Errorf("pages of 3 = %q, want %q", all, keys)
	}
}

// The tests run as root, for whom a read-only mode changes nothing; a path
// under a regular file is not writable for anyone.
func TestOpenNotWritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "data")
	s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir, Logger: testkit.Logger(t)})
	if err == nil {
		s.Close(context.Background())
		t.Fatalf("kvstore.Open(%s) = nil error, want one saying it is not writable", dir)
	}
	if want := "data directory " + dir + " is not writable"; !strings.Contains(err.Error(), want) {
		t.Errorf("kvstore.Open(%s) = %q, want it to contain %q", dir, err, want)
	}
}

// Two generations share the database. A value one caches must never hide
// a change the other committed.
func TestStoreCrossGeneration(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, b *kvstore.Store)
		want   string
	}{
		{"overwrite", func(t *testing.T, b *kvstore.Store) { kvstore.MustPut(t, b, "k", "v2") }, "v2"},
		{"delete", func(t *testing.T, b *kvstore.Store) {
			if _, err := b.Delete(t.Context(), "k"); err != nil {
				t.Fatal(err)
			}
		}, "<absent>"},
		{"delete and put again", func(t *testing.T, b *kvstore.Store) {
			if _, err := b.Delete(t.Context(), "k"); err != nil {
				t.Fatal(err)
			}
			kvstore.MustPut(t, b, "k", "v3")
		}, "v3"},
		{"put the same value", func(t *testing.T, b *kvstore.Store) { kvstore.MustPut(t, b, "k", "v1") }, "v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := kvstore.OpenTest(t, dir), kvstore.OpenTest(t, dir)
			kvstore.MustPut(t, a, "k", "v1")
			for range 2 {
				if got := kvstore.MustGet(t, a, "k"); got != "v1" {
					t.Fatalf("A.Get(k) after A.Put(k, v1) = %q, want v1", got)
				}
			}
			if st := a.CacheStats(); st.Hits != 2 {
				t.Fatalf("A's cache stats %+v, want 2 hits: k is not cached, so the test proves nothing", st)
			}
			tt.change(t, b)
			if got := kvstore.MustGet(t, a, "k"); got != tt.want {
				t.Errorf("A.Get(k) after B's %s = %q, want %q", tt.name, got, tt.want)
			}
			if got := kvstore.MustGet(t, b, "k"); got != tt.want {
				t.Errorf("B.Get(k) after B's %s = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}

func TestStoreCloseCheckpoints(t *testing.T) {
	dir := t.TempDir()
	s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir, Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		kvstore.MustPut(t, s, "k"+strconv.Itoa(i), strings.Repeat("v", 1000))
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "kv.db-wal")); err == nil && fi.Size() != 0 {
		t.Errorf("%s-wal is %d bytes after Close, want empty or gone", "kv.db", fi.Size())
	}
	_, _, err = s.Get(t.Context(), "k1")
	var u interface{ Unavailable() bool }
	if !errors.Is(err, kvstore.ErrClosed) || !errors.As(err, &u) || !u.Unavailable() {
		t.Errorf("Get after Close: %v, want kvstore.ErrClosed, which reports Unavailable", err)
	}

	db, err := sql.Open("sqlite", filepath.Join(dir, "kv.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var check string
	if err := db.QueryRowContext(t.Context(), "PRAGMA integrity_check").Scan(&check); err != nil {
		t.Fatal(err)
	}
	if check != "ok" {
		t.Errorf("integrity_check after Close = %q, want ok", check)
	}
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM kv").Scan(&n); err != nil || n != 50 {
		t.Errorf("rows after Close = %d (%v), want 50", n, err)
	}
}
