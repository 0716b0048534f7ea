package kvstore

import (
	"database/sql"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
)

// Regression test: a miss that read a value, then lost the race with
// another generation's write and with the check that evicted the key,
// cached the stale value for good. cacheAdd must refuse a value read
// before the changes the cache has already reconciled.
func TestStoreStaleFillRefused(t *testing.T) {
	dir := t.TempDir()
	a, b := OpenTest(t, dir), OpenTest(t, dir)
	MustPut(t, a, "k", "v1")
	var seq1 int64
	if err := a.db.QueryRowContext(t.Context(), "SELECT seq FROM kv WHERE key = 'k'").Scan(&seq1); err != nil {
		t.Fatal(err)
	}
	MustGet(t, a, "other") // A reconciles up to v1 and leaves k uncached
	a.mu.Lock()
	a.cache.clear()
	a.mu.Unlock()

	// A's miss on k reads v1 at seq1 (high-water mark seq1); before it
	// caches it, B writes v2 and A's check for another Get processes it.
	MustPut(t, b, "k", "v2")
	MustGet(t, a, "other")
	if a.cacheAdd("k", []byte("v1"), seq1, seq1) {
		t.Error("cacheAdd(k, v1) of a value read before a change A has reconciled = true, want false")
	}
	if got := MustGet(t, a, "k"); got != "v2" {
		t.Errorf("A.Get(k) after B.Put(k, v2) and a late fill of v1 = %q, want v2", got)
	}
}

// A cache whose next changes were trimmed from the changelog cannot tell
// which keys changed, so it must drop everything.
func TestStoreTrimmedChangelogDropsCache(t *testing.T) {
	dir := t.TempDir()
	a, b := OpenTest(t, dir), OpenTest(t, dir)
	MustPut(t, a, "k1", "v1")
	MustPut(t, a, "k2", "v1")
	MustGet(t, a, "k1")
	MustPut(t, b, "k1", "v2")
	MustPut(t, b, "k2", "v2")
	// Keep only the last row (k2's), as a trim far behind would.
	if _, err := b.db.ExecContext(t.Context(), "DELETE FROM changelog WHERE seq < (SELECT MAX(seq) FROM changelog)"); err != nil {
		t.Fatal(err)
	}
	if got := MustGet(t, a, "k1"); got != "v2" {
		t.Errorf("A.Get(k1) after B.Put(k1, v2) and a trim of that change = %q, want v2", got)
	}
}

// A watch connection that database/sql retired (or that failed) must not
// leave the store failing or serving from an unchecked cache.
func TestStoreWatchConnectionLost(t *testing.T) {
	dir := t.TempDir()
	a, b := OpenTest(t, dir), OpenTest(t, dir)
	MustPut(t, a, "k", "v1")
	MustGet(t, a, "k")
	a.mu.Lock()
	a.watch.Close()
	a.mu.Unlock()
	MustPut(t, b, "k", "v2")
	if got := MustGet(t, a, "k"); got != "v2" {
		t.Errorf("A.Get(k) after A's watch connection closed and B.Put(k, v2) = %q, want v2", got)
	}
	if got := MustGet(t, a, "k"); got != "v2" {
		t.Errorf("second A.Get(k) = %q, want v2", got)
	}
}

// Writers and readers on both generations at once. Each key has one
// writer, so after its Put is acknowledged the writer knows the one right
// answer and checks it on the other generation; readers check that no key
// ever goes back to an older value. Run with -race.
func TestStoreConcurrentGenerations(t *testing.T) {
	dir := t.TempDir()
	stores := []*Store{OpenTest(t, dir), OpenTest(t, dir)}
	const (
		writers = 4
		readers = 4
		writes  = 60
		reads   = 300
	)
	key := func(w int) string { return "key" + strconv.Itoa(w) }
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			k := key(w)
			for n := 1; n <= writes; n++ {
				from, to := stores[n%2], stores[(n+1)%2]
				want := strconv.Itoa(n)
				if n%10 == 0 {
					if _, err := from.Delete(ctx, k); err != nil {
						t.Errorf("Delete(%s): %v", k, err)
						return
					}
					want = ""
				} else if _, err := from.Put(ctx, k, []byte(want)); err != nil {
					t.Errorf("Put(%s, %s): %v", k, want, err)
					return
				}
				v, ok, err := to.Get(ctx, k)
				if err != nil {
					t.Errorf("Get(%s): %v", k, err)
					return
				}
				if got := string(v); got != want || ok != (want != "") {
					t.Errorf("other generation's Get(%s) after Put/Delete #%d = %q (found %v), want %q", k, n, got, ok, want)
					return
				}
			}
		})
	}
	for r := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			last := make(map[string]int) // by key, on either generation
			for range reads {
				si := rng.IntN(2)
				k := key(rng.IntN(writers))
				v, ok, err := stores[si].Get(ctx, k)
				if err != nil {
					t.Errorf("Get(%s): %v", k, err)
					return
				}
				if !ok {
					continue
				}
				n, err := strconv.Atoi(string(v))
				if err != nil {
					t.Errorf("Get(%s) = %q, not a value any writer wrote", k, v)
					return
				}
				if n < last[k] {
					t.Errorf("store %d: Get(%s) = %d after this reader saw %d: a value went back in time", si, k, n, last[k])
					return
				}
				last[k] = n
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, s := range stores {
		for w := range writers {
			k := key(w)
			if got, want := MustGet(t, s, k), dbValue(t, s, k); got != want {
				t.Errorf("store %d: final Get(%s) = %q, want the database's %q", i, k, got, want)
			}
		}
	}
}

// dbValue reads key's value from the database, bypassing every cache.
func dbValue(t *testing.T, s *Store, key string) string {
	t.Helper()
	var v []byte
	err := s.db.QueryRowContext(t.Context(), "SELECT value FROM kv WHERE key = ?", key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "<absent>"
	}
	if err != nil {
		t.Fatalf("read %q from the database: %v", key, err)
	}
	return string(v)
}
