package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	_ "modernc.org/sqlite"
)

// kvUpgrades is how many upgrades the no-lost-writes test goes through.
const kvUpgrades = 30

// kvValue is the value written under key: derived from it, so a read can
// check it without a record of its own.
func kvValue(key string) []byte {
	r := rand.New(rand.NewPCG(uint64(len(key)), hash(key)))
	b := make([]byte, 200+r.IntN(2000))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func hash(s string) uint64 {
	var h uint64 = 14695981039346656037
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// Writers PUT unique keys and record every acknowledged one while the
// server goes through kvUpgrades upgrades and then a SIGTERM. After a
// restart from the same data directory every acknowledged key reads back
// with its value, and the database passes its integrity check.
func TestNoAcknowledgedWriteLost(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	s := start(t, startOptions{dir: dir})
	pid := s.pidOf(1)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var mu sync.Mutex
	var acked []string
	failed := map[string]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *testkit.Conn
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			loop(ctx, 1_000_000, 5*time.Minute, func() {
				if c == nil {
					var err error
					if c, err = testkit.DialTimeout(s.addr, requestTimeout); err != nil {
						mu.Lock()
						failed[testkit.ErrorKind(err)]++
						mu.Unlock()
						time.Sleep(10 * time.Millisecond) // the server is gone: try again soon
						return
					}
				}
				mu.Lock()
				key := fmt.Sprintf("w%d/%06d", w, len(acked)+failed["n"])
				failed["n"]++
				mu.Unlock()
				req, _ := http.NewRequest("PUT", "http://"+s.addr+"/kv/"+key, bytes.NewReader(kvValue(key)))
				resp, _, err := c.Do(req)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					failed[testkit.ErrorKind(err)]++
					c.Close()
					c = nil
					return
				case resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusNoContent:
					acked = append(acked, key)
				default:
					failed[fmt.Sprintf("status %d", resp.StatusCode)]++
				}
				if resp.Close {
					c.Close()
					c = nil
				}
			})
		}()
	}
	waitAcked := func(n int) {
		testkit.WaitFor(t, time.Minute, "writes acknowledged", func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(acked) < n {
				return fmt.Errorf("%d acknowledged", len(acked))
			}
			return nil
		})
	}
	waitAcked(50)
	for g := 2; g <= kvUpgrades+1; g++ {
		pid = s.upgrade(pid, g)
	}
	mu.Lock()
	duringUpgrades := len(acked)
	failedDuring := 0
	for k, n := range failed {
		if k != "n" {
			failedDuring += n
		}
	}
	mu.Unlock()
	waitAcked(duringUpgrades + 50)
	s.signal(pid, syscall.SIGTERM)
	if st := s.waitExit(pid, time.Minute); st != 0 {
		t.Errorf("exit status after SIGTERM = %d, want 0", st)
	}
	cancel()
	wg.Wait()

	mu.Lock()
	keys := append([]string(nil), acked...)
	mu.Unlock()
	t.Logf("%d writes acknowledged (%d during the %d upgrades, %d failed then), the rest until the stop", len(keys), duringUpgrades, kvUpgrades, failedDuring)
	if failedDuring != 0 {
		t.Errorf("%d writes failed during the upgrades, want 0: %v", failedDuring, failed)
	}

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "data", "kv.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	var check string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("PRAGMA integrity_check = %q, %v; want ok", check, err)
	}
	db.Close()

	// A new server on the same data directory reads every one back.
	s2 := start(t, startOptions{dir: dir})
	c := &http.Client{Timeout: 10 * time.Second}
	lost, corrupt := 0, 0
	for _, key := range keys {
		resp, err := c.Get(s2.url("/kv/" + key))
		if err != nil {
			t.Fatalf("GET /kv/%s: %v", key, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusNotFound:
			lost++
		case resp.StatusCode != http.StatusOK || !bytes.Equal(body, kvValue(key)):
			corrupt++
		}
	}
	t.Logf("after a restart: %d of %d acknowledged writes read back; %d lost, %d corrupted", len(keys)-lost-corrupt, len(keys), lost, corrupt)
	if lost != 0 || corrupt != 0 {
		t.Errorf("%d acknowledged writes lost and %d corrupted, want 0 and 0", lost, corrupt)
	}
}

// kvDo sends one request on c and returns the status, body and the
// generation that answered.
func kvDo(t *testing.T, c *testkit.Conn, method, addr, key string, body []byte) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+addr+"/kv/"+key, bytes.NewReader(body))
	resp, b, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s /kv/%s: %v", method, key, err)
	}
	return resp.StatusCode, string(b), resp.Header.Get("X-Generation")
}

// cacheStats reads the cache counters from the control API.
func (s *server) cacheStats() (hits, misses int) {
	s.t.Helper()
	out, errOut, st := s.ctl("status", "-json")
	if st != 0 {
		s.t.Fatalf("ctl status: %s", errOut)
	}
	var v struct {
		Generation int `json:"generation"`
		Cache      struct {
			Hits   int `json:"hits"`
			Misses int `json:"misses"`
		} `json:"cache"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		s.t.Fatal(err)
	}
	return v.Cache.Hits, v.Cache.Misses
}

// Read-your-writes across generations: a key the new generation has
// cached, then overwritten through a connection the old one still holds,
// reads back from the new generation with the new value.
func TestReadYourWritesAcrossGenerations(t *testing.T) {
	s := start(t, startOptions{args: []string{"-idle-grace", "30s", "-drain-timeout", "60s"}})
	// Two connections generation 1 holds: each answer it gives while
	// draining ends its connection.
	old := testkit.Dial(t, s.addr)
	old2 := testkit.Dial(t, s.addr)
	if st, _, gen := kvDo(t, old, "PUT", s.addr, "greeting", []byte("v1")); st != 201 || gen != "1" {
		t.Fatalf("PUT on generation 1: %d from %s", st, gen)
	}
	if st, _, gen := kvDo(t, old2, "GET", s.addr, "greeting", nil); st != 200 || gen != "1" {
		t.Fatalf("GET on generation 1: %d from %s", st, gen)
	}

	s.signal(s.pidOf(1), syscall.SIGHUP)
	s.waitReady(2)
	// Generation 1 stops accepting after generation 2 is ready, not at the
	// same instant: until it logs "drain started" (its listeners closed) a
	// new connection may still be its own. Issue 10 item 16: without this
	// wait the test failed about 1 run in 15.
	s.logs.Wait(t, time.Minute, "generation 1's drain start", func(l testkit.LogLine) bool {
		return l.Msg() == "drain started" && l.Int("generation") == 1
	})
	fresh := func() *testkit.Conn { return testkit.Dial(t, s.addr) }
	n1 := fresh()
	for range 2 { // the second read is served from generation 2's cache
		if st, body, gen := kvDo(t, n1, "GET", s.addr, "greeting", nil); st != 200 || body != "v1" || gen != "2" {
			t.Fatalf("GET on generation 2: %d %q from %s, want 200 v1 from 2", st, body, gen)
		}
	}
	if hits, _ := s.cacheStats(); hits < 1 {
		t.Fatalf("generation 2 has %d cache hits; the key should be cached", hits)
	}

	// The old generation is draining, but still answers the connection it holds.
	if st, _, gen := kvDo(t, old, "PUT", s.addr, "greeting", []byte("v2")); st != 204 || gen != "1" {
		t.Fatalf("PUT through generation 1's connection: %d from generation %s, want 204 from 1", st, gen)
	}
	if st, body, gen := kvDo(t, fresh(), "GET", s.addr, "greeting", nil); st != 200 || body != "v2" || gen != "2" {
		t.Errorf("GET on generation 2 after generation 1 overwrote it: %d %q from %s, want 200 v2 from 2", st, body, gen)
	}
	if st, _, gen := kvDo(t, old2, "DELETE", s.addr, "greeting", nil); st != 204 || gen != "1" {
		t.Fatalf("DELETE through generation 1's connection: %d from %s", st, gen)
	}
	if st, _, _ := kvDo(t, fresh(), "GET", s.addr, "greeting", nil); st != 404 {
		t.Errorf("GET on generation 2 after generation 1 deleted it: %d, want 404", st)
	}
}

// The cache is warm after an upgrade: the new generation's first reads of
// the keys the old one had cached are hits. After a cold start they are
// misses.
func TestCacheWarmAfterUpgrade(t *testing.T) {
	const n = 200
	s := start(t, startOptions{})
	c := testkit.Dial(t, s.addr)
	var keys []string
	for i := range n {
		key := fmt.Sprintf("warm/%03d", i)
		keys = append(keys, key)
		if st, _, _ := kvDo(t, c, "PUT", s.addr, key, kvValue(key)); st != 201 {
			t.Fatalf("PUT %s: %d", key, st)
		}
	}
	c.Close()
	readAll := func(s *server) (hits, misses int) {
		h0, m0 := s.cacheStats()
		c := testkit.Dial(t, s.addr)
		defer c.Close()
		for _, key := range keys {
			st, body, _ := kvDo(t, c, "GET", s.addr, key, nil)
			if st != 200 || body != string(kvValue(key)) {
				t.Fatalf("GET %s: %d, body of %d bytes", key, st, len(body))
			}
		}
		h1, m1 := s.cacheStats()
		return h1 - h0, m1 - m0
	}
	readAll(s) // generation 1 caches them

	snapshot := filepath.Join(s.dir, "data", "cache.snapshot")
	s.signal(s.pidOf(1), syscall.SIGHUP)
	s.waitReady(2)
	s.waitExit(s.pidOf(1), time.Minute)
	warmed := s.logs.Wait(t, time.Minute, "generation 2's cache warm-up", func(l testkit.LogLine) bool {
		return l.Msg() == "cache warmed" && l.Int("generation") == 2
	})
	// The hot keys came over the handoff channel, not through a file.
	if from := warmed.Str("from"); from != "previous generation" {
		t.Errorf("generation 2 warmed its cache from %q, want the state the previous generation handed over", from)
	}
	if _, err := os.Stat(snapshot); err == nil {
		t.Errorf("an upgrade wrote %s; the state goes over the handoff channel, the file only at a full stop", snapshot)
	}
	hits, misses := readAll(s)
	warm := float64(hits) / float64(hits+misses)

	// The same reads after a cold start: stopped, snapshot removed.
	s.signal(s.pidOf(2), syscall.SIGTERM)
	s.waitExit(s.pidOf(2), time.Minute)
	if err := os.Remove(snapshot); err != nil {
		t.Fatalf("the stop left no cache snapshot: %v", err)
	}
	cold := start(t, startOptions{dir: s.dir})
	ch, cm := readAll(cold)
	coldRatio := float64(ch) / float64(ch+cm)

	t.Logf("hit ratio of the first %d reads: %.2f after an upgrade (%d hits, %d misses), %.2f after a cold start (%d hits, %d misses)",
		n, warm, hits, misses, coldRatio, ch, cm)
	if warm < 0.9 {
		t.Errorf("hit ratio of the first reads after an upgrade = %.2f, want the cache warm (at least 0.9)", warm)
	}
	if coldRatio != 0 {
		t.Errorf("hit ratio of the first reads after a cold start = %.2f, want 0 (the comparison is void)", coldRatio)
	}
}

// A new generation that cannot read the state the old one handed over
// fails the upgrade, and the old one serves on.
func TestRejectedStateFailsUpgrade(t *testing.T) {
	s := start(t, startOptions{env: []string{"HANDOFF_FAULT_BAD_STATE=1"}})
	pid := s.waitReady(1)
	c := testkit.Dial(t, s.addr)
	for i := range 20 {
		key := fmt.Sprintf("hot/%d", i)
		kvDo(t, c, "PUT", s.addr, key, kvValue(key))
		kvDo(t, c, "GET", s.addr, key, nil)
	}
	stop, tl := backgroundLoad(s.addr)
	waitRequests(t, tl, 200)
	s.install(vFaults) // corrupts the state it is handed
	_, errOut, st := s.ctl("upgrade")
	waitRequests(t, tl, total(tl)+200)
	stop()
	if st != 1 || !strings.Contains(errOut, "handed-over cache state") {
		t.Errorf("ctl upgrade to a generation that rejects the state: status %d, %q; want 1 and the reason", st, errOut)
	}
	if n := tl.failures(); n > 0 {
		t.Errorf("%d requests failed, want 0: %v", n, tl.examples)
	}
	info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
	if info.PID != pid {
		t.Errorf("pid %d serves after the rejected state, want the old generation (%d)", info.PID, pid)
	}
	t.Logf("rejected state: %d requests, %d failed; ctl upgrade said: %s", total(tl), tl.failures(), strings.TrimSpace(errOut))
}
