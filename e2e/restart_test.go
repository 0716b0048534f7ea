package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// rootInfo is the answer of GET /.
type rootInfo struct {
	PID        int    `json:"pid"`
	Generation int    `json:"generation"`
	Version    string `json:"version"`
}

func getRoot(t *testing.T, c *http.Client, url string) (rootInfo, http.Header) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status = %d, want 200", url, resp.StatusCode)
	}
	var info rootInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatalf("GET %s: decode: %v", url, err)
	}
	return info, resp.Header
}

// oneConnClient is a client whose requests all share one connection, so a
// request sent after a first one is served by whoever accepted that
// connection.
func oneConnClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}, Timeout: time.Minute}
}

// sendWhenWritten sends req and returns once the request is on the wire;
// the response arrives on the returned channel.
func sendWhenWritten(t *testing.T, c *http.Client, req *http.Request) <-chan result {
	t.Helper()
	written := make(chan struct{})
	var once sync.Once // a transport that retries writes the request again
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(func() { close(written) }) }}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	out := make(chan result, 1)
	go func() {
		resp, err := c.Do(req)
		r := result{err: err, at: time.Now()}
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.status, r.body, r.gen, r.err = resp.StatusCode, body, resp.Header.Get("X-Generation"), rerr
			r.at = time.Now()
		}
		out <- r
	}()
	select {
	case <-written:
	case r := <-out:
		t.Fatalf("%s %s failed before it was written: %v", req.Method, req.URL, r.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s %s: not written within 30s", req.Method, req.URL)
	}
	return out
}

type result struct {
	status int
	body   []byte
	gen    string
	err    error
	at     time.Time
}

// SIGHUP after an atomic replacement of the binary brings up the new
// version as the next generation, and the old process exits 0.
func TestUpgradeToNewVersion(t *testing.T) {
	s := start(t, startOptions{version: v1})
	c := &http.Client{Timeout: 10 * time.Second}
	info, _ := getRoot(t, c, s.url("/"))
	if info.Version != v1 || info.Generation != 1 {
		t.Fatalf("before upgrade: version %q generation %d, want %q 1", info.Version, info.Generation, v1)
	}

	s.install(v2)
	pid2 := s.upgrade(info.PID, 2)

	c.CloseIdleConnections()
	info, h := getRoot(t, c, s.url("/"))
	if info.Version != v2 || info.Generation != 2 || info.PID != pid2 {
		t.Errorf("after upgrade: version %q generation %d pid %d, want %q 2 %d", info.Version, info.Generation, info.PID, v2, pid2)
	}
	if g := h.Get("X-Generation"); g != "2" {
		t.Errorf("after upgrade: X-Generation = %q, want 2", g)
	}
	ready := s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "child ready" })
	if len(ready) != 1 || ready[0].Str("new_version") != v2 || ready[0].Int("new_pid") != pid2 {
		t.Errorf("child ready events = %v, want one naming %s pid %d", ready, v2, pid2)
	}
}

// A request in flight when SIGHUP arrives is answered by the old
// generation, completely, before it exits.
func TestSlowRequestSurvivesUpgrade(t *testing.T) {
	s := start(t, startOptions{})
	c := oneConnClient()
	info, _ := getRoot(t, c, s.url("/")) // this connection belongs to generation 1

	req, _ := http.NewRequest("GET", s.url("/slow?ms=2000"), nil)
	slow := sendWhenWritten(t, c, req)
	s.signal(info.PID, syscall.SIGHUP)
	s.waitReady(2)

	r := <-slow
	if r.err != nil {
		t.Fatalf("GET /slow?ms=2000 across upgrade: %v", r.err)
	}
	if r.status != http.StatusOK || r.gen != "1" {
		t.Errorf("GET /slow?ms=2000 across upgrade: status %d from generation %s, want 200 from 1", r.status, r.gen)
	}
	if st := s.waitExit(info.PID, time.Minute); st != 0 {
		t.Errorf("generation 1 exit status = %d, want 0", st)
	}
}

// SIGTERM while slow requests are in flight: /readyz fails first, every
// request completes, and the process exits 0.
func TestStopCompletesInFlightRequests(t *testing.T) {
	const n = 5
	s := start(t, startOptions{args: []string{"-shutdown-delay", "1s"}})
	var slows []<-chan result
	var pid int
	for range n {
		c := oneConnClient()
		info, _ := getRoot(t, c, s.url("/"))
		pid = info.PID
		req, _ := http.NewRequest("GET", s.url("/slow?ms=2500"), nil)
		slows = append(slows, sendWhenWritten(t, c, req))
	}
	s.signal(pid, syscall.SIGTERM)

	var notReadyAt time.Time
	testkit.WaitFor(t, 10*time.Second, "GET /readyz after SIGTERM", func() error {
		c := testkit.NewConnClient()
		resp, err := c.Get(s.url("/readyz"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("status = %d, want 503", resp.StatusCode)
		}
		notReadyAt = time.Now()
		return nil
	})

	for i, ch := range slows {
		r := <-ch
		if r.err != nil || r.status != http.StatusOK {
			t.Errorf("slow request %d across SIGTERM: status %d, error %v; want 200", i, r.status, r.err)
			continue
		}
		if !r.at.After(notReadyAt) {
			t.Errorf("slow request %d completed at %v, before /readyz turned 503 at %v", i, r.at, notReadyAt)
		}
	}
	if st := s.waitExit(pid, time.Minute); st != 0 {
		t.Errorf("exit status after SIGTERM = %d, want 0", st)
	}
	drained := s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "drain finished" && l.Str("reason") == "stop" })
	if len(drained) != 1 || drained[0].Int("force_closed") != 0 {
		t.Errorf("drain finished events = %v, want one with force_closed 0", drained)
	}
}

// No connection is refused, and no request fails, across 10 consecutive
// upgrades while clients open a new connection for every request.
func TestNoRefusedConnectionsAcrossUpgrades(t *testing.T) {
	const upgrades = 10
	s := start(t, startOptions{})
	info, _ := getRoot(t, &http.Client{Timeout: 10 * time.Second}, s.url("/"))

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	gens := map[string]bool{}
	for range 2 * cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			// Bounded: stops when the upgrades are done, or after 20000
			// requests or two minutes, whichever comes first.
			deadline := time.Now().Add(2 * time.Minute)
			for i := 0; i < 20000 && ctx.Err() == nil && time.Now().Before(deadline); i++ {
				kind, gen := classify(c.Get(s.url("/")))
				mu.Lock()
				counts[kind]++
				gens[gen] = true
				mu.Unlock()
			}
		}()
	}
	pid := info.PID
	for g := 2; g <= upgrades+1; g++ {
		pid = s.upgrade(pid, g)
	}
	cancel()
	wg.Wait()

	t.Logf("requests by outcome: %v", counts)
	for kind, n := range counts {
		if kind != "ok" && n > 0 {
			t.Errorf("%d requests failed with %s across %d upgrades, want 0", n, kind, upgrades)
		}
	}
	if counts["ok"] == 0 {
		t.Error("no request succeeded")
	}
	if len(gens) < 3 {
		t.Errorf("answers came from generations %v; the load did not span the upgrades", gens)
	}
}

// classify names the outcome of a request: "ok", or the kind of failure.
func classify(resp *http.Response, err error) (kind, gen string) {
	if err != nil {
		return testkit.ErrorKind(err), ""
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "body " + testkit.ErrorKind(err), ""
	}
	if resp.StatusCode/100 != 2 {
		return "status " + strconv.Itoa(resp.StatusCode), ""
	}
	return "ok", resp.Header.Get("X-Generation")
}
