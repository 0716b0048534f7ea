package e2e

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// A storm of 50 SIGHUPs in one second, in bursts of 5 sent back to back,
// each to the pid the PID file names at that moment, as an operator's
// script would: no request fails, every process that hands over exits 0,
// at most one upgrade is ever in flight, the SIGHUPs that came during an
// upgrade were queued and collapsed (fewer upgrades than SIGHUPs), and the
// queued upgrades ran (the generation count goes past 2).
func TestSIGHUPStorm(t *testing.T) {
	s := start(t, startOptions{args: []string{"-pid-file", "server.pid"}})
	stop, tl := backgroundLoad(s.addr)
	waitRequests(t, tl, 200)

	pidFile := filepath.Join(s.dir, "server.pid")
	sent, missed := 0, 0
	for burst := range 10 {
		for range 5 {
			b, err := os.ReadFile(pidFile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid == 0 {
				t.Fatalf("read PID file: %q, %v", b, err)
			}
			if err := syscall.Kill(pid, syscall.SIGHUP); errors.Is(err, syscall.ESRCH) {
				missed++ // named a generation that exited a moment ago
			} else {
				sent++
			}
		}
		if burst < 9 {
			time.Sleep(100 * time.Millisecond) // paces the bursts over one second
		}
	}
	last := s.settle()
	stop()

	t.Logf("%d SIGHUPs delivered (%d to a pid that had just exited); final generation %d; %d requests, %d failed",
		sent, missed, last, total(tl), tl.failures())
	queued := len(s.logs.Find(func(l testkit.LogLine) bool {
		switch l.Msg() {
		case "upgrade queued: another upgrade is in progress", "forwarding queued upgrade to new generation",
			"upgrade requested after handoff: forwarding to new generation",
			"upgrade waits for the previous generation to finish draining":
			return true
		}
		return false
	}))
	t.Logf("%d upgrades for %d SIGHUPs; %d log events of a request queued, forwarded or waiting", last-1, sent, queued)
	if queued == 0 {
		t.Error("no SIGHUP was queued behind an upgrade: the storm did not test queueing")
	}
	if last-1 >= sent {
		t.Errorf("%d upgrades for %d SIGHUPs: queued requests did not collapse", last-1, sent)
	}
	if last < 3 {
		t.Errorf("final generation %d: the SIGHUPs that came during the first upgrade did not run another", last)
	}
	if n := tl.failures(); n != 0 {
		t.Errorf("%d requests failed during the storm, want 0: %v", n, tl.examples)
	}
	for g := 1; g < last; g++ {
		pid := s.pidOf(g)
		if st := s.waitExit(pid, time.Minute); st != 0 {
			t.Errorf("generation %d (pid %d) exit status %d, want 0", g, pid, st)
		}
	}
	assertOneUpgradeAtATime(t, s)
}

// settle waits until upgrades stop: the newest generation's predecessor
// has exited and no queued upgrade follows within 3 seconds. It returns
// the newest generation.
func (s *server) settle() int {
	s.t.Helper()
	g := 1
	for {
		for s.readyOK(g+1, 0) {
			g++
		}
		if g > 1 {
			s.waitExit(s.pidOf(g-1), 2*time.Minute)
		}
		// A request queued in generation g runs once g-1 has exited, within
		// moments; 3 s without one means none is queued.
		if !s.readyOK(g+1, 3*time.Second) {
			return g
		}
	}
}

// readyOK reports whether generation gen logs "ready" within timeout.
func (s *server) readyOK(gen int, timeout time.Duration) bool {
	_, err := s.logs.Await(timeout, func(l testkit.LogLine) bool { return l.Msg() == "ready" && l.Int("generation") == gen })
	return err == nil
}

// pidOf returns the pid of generation gen, which must have been ready.
func (s *server) pidOf(gen int) int {
	s.t.Helper()
	ready := s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "ready" && l.Int("generation") == gen })
	if len(ready) == 0 {
		s.t.Fatalf("generation %d was never ready", gen)
	}
	return ready[len(ready)-1].Int("pid")
}

// assertOneUpgradeAtATime checks, from the logs of every generation, that
// no two upgrade attempts overlapped in time.
func assertOneUpgradeAtATime(t *testing.T, s *server) {
	t.Helper()
	type span struct {
		pid        int
		start, end time.Time
	}
	var spans []span
	open := map[int]time.Time{}
	for _, l := range s.logs.All() {
		at, err := time.Parse(time.RFC3339Nano, l.Str("time"))
		if err != nil {
			continue
		}
		switch l.Msg() {
		case "upgrade started":
			open[l.Int("pid")] = at
		case "child ready", failedEvent:
			if st, ok := open[l.Int("pid")]; ok {
				spans = append(spans, span{l.Int("pid"), st, at})
				delete(open, l.Int("pid"))
			}
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start.Compare(b.start) })
	for i := 1; i < len(spans); i++ {
		if spans[i].start.Before(spans[i-1].end) {
			t.Errorf("upgrade by pid %d started at %v, before the one by pid %d ended at %v",
				spans[i].pid, spans[i].start, spans[i-1].pid, spans[i-1].end)
		}
	}
	if len(spans) == 0 {
		t.Error("no upgrade attempt found in the logs")
	}
}

// A drain cannot block upgrades forever: with a request that never ends,
// an upgrade asked of the new generation waits for the old one, which
// force-closes that request at its drain deadline and exits; then the
// upgrade runs, and the log says so.
func TestQueuedUpgradeRunsAfterDrainDeadline(t *testing.T) {
	s := start(t, startOptions{args: []string{"-drain-timeout", "2s"}})
	// A connection of our own, which never retries: generation 1 holds it.
	c := testkit.Dial(t, s.addr)
	req, _ := http.NewRequest("GET", s.url("/"), nil)
	if resp, _, err := c.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /: %v", err)
	}
	info := rootInfo{PID: s.pidOf(1)}
	// Written before the SIGHUP; its answer never comes.
	req, _ = http.NewRequest("GET", s.url("/slow?ms=60000"), nil)
	c.SetDeadline(time.Now().Add(time.Minute))
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	stuck := make(chan error, 1)
	go func() {
		_, err := http.ReadResponse(c.Reader, req)
		stuck <- err
	}()

	s.signal(info.PID, syscall.SIGHUP)
	pid2 := s.waitReady(2)
	s.signal(pid2, syscall.SIGHUP)
	s.logs.Wait(t, time.Minute, "the upgrade to wait for the drain", func(l testkit.LogLine) bool {
		return l.Msg() == "upgrade waits for the previous generation to finish draining" && l.Int("pid") == pid2
	})
	s.waitReady(3)
	drained := s.logs.Wait(t, time.Minute, "generation 1's drain", func(l testkit.LogLine) bool {
		return l.Msg() == "drain finished" && l.Int("pid") == info.PID
	})
	if drained.Int("force_closed") != 1 {
		t.Errorf("generation 1 force-closed %d connections at its deadline, want 1", drained.Int("force_closed"))
	}
	if st := s.waitExit(info.PID, time.Minute); st != 0 {
		t.Errorf("generation 1 exit status after a forced drain = %d, want 0", st)
	}
	ran := s.logs.Find(func(l testkit.LogLine) bool {
		return l.Msg() == "previous generation exited: running queued upgrade" && l.Int("pid") == pid2
	})
	if len(ran) != 1 {
		t.Errorf("generation 2 logged %d 'running queued upgrade' events, want 1", len(ran))
	}
	if err := <-stuck; err == nil {
		t.Error("the request that never ended got an answer, want it force-closed")
	}
}
