package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/restarttest"
)

// lossUpgrades is how many times the loss test upgrades under load.
const lossUpgrades = 20

// The loss test: the real binary through lossUpgrades upgrades while every
// kind of client sends load, counting every outcome. Zero requests may
// fail, of any kind; every generation must answer.
//
// The restart kit (restarttest) sends the HTTP/1.1 load: keep-alive
// clients with 30% POST /echo, new-connection clients, and /slow requests
// in flight across each upgrade; it runs the upgrades too. The clients it
// does not cover run beside it: Go's HTTP/2 client over h2c, SSE and
// WebSocket.
func TestLossUnderRestarts(t *testing.T) {
	s := start(t, startOptions{args: []string{"-log-level", "info"}})
	pid := s.waitReady(1)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	tl := newTally()
	var wg sync.WaitGroup
	spawn(&wg, 2, func(int) { h2Client(ctx, s.addr, tl, 3) })
	spawn(&wg, 2, func(int) { sseClient(ctx, s.addr, tl) })
	spawn(&wg, 2, func(i int) { wsClient(ctx, s.addr, tl, uint64(i)) })
	kinds := []string{"h2c", "sse", "websocket"}

	// The kit's clients: 6 on kept-alive connections, 4 more sending
	// /slow, 2 with a new connection per request. It waits for an answer
	// to each before the first upgrade and after the last.
	ka, nc := restarttest.KeepAlive, restarttest.NewConn
	rep, err := restarttest.Check(ctx, restarttest.Config{
		URL:         s.url("/"),
		GenHeader:   "X-Generation",
		Clients:     12,
		Modes:       []restarttest.Mode{ka, ka, ka, ka, ka, nc},
		PostPath:    "/echo",
		SlowPath:    "/slow?ms=500",
		SlowClients: 4,
		Restarts:    lossUpgrades,
		Interval:    time.Millisecond, // back to back: each upgrade waits for the last
		Restart: func(_ context.Context, r restarttest.RestartInfo) error {
			if r.Index == 1 {
				waitAllKinds(t, tl, "every client kind served before the upgrades", kinds...)
			}
			pid = s.upgrade(pid, r.Index+1)
			if r.Index == lossUpgrades {
				waitAllKinds(t, tl, "every client kind served by the last generation", kinds...)
			}
			return nil
		},
	})
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("restart kit: %v", err)
	}

	t.Logf("after %d upgrades:\n%s%s", lossUpgrades, rep.Summary(), tl)
	for _, e := range tl.examples {
		t.Log("failure:", e)
	}
	if n := tl.failures() + rep.Failed; n > 0 {
		t.Errorf("%d requests failed across %d upgrades, want 0", n, lossUpgrades)
	}
	gens := map[string]bool{}
	for g := range tl.gens {
		gens[g] = true
	}
	for _, g := range rep.GenLog {
		gens[g.ID] = true
	}
	if len(gens) != lossUpgrades+1 {
		t.Errorf("%d generations answered, want %d (the upgrades plus one)", len(gens), lossUpgrades+1)
	}
	for _, k := range []string{"sse", "websocket"} {
		if tl.resumes[k] < lossUpgrades {
			t.Errorf("%s clients resumed %d times across %d upgrades; each upgrade should move them", k, tl.resumes[k], lossUpgrades)
		}
	}
	across := 0
	for _, h := range rep.RestartLog {
		for _, q := range rep.Timeline {
			if q.Slow() && q.Outcome == restarttest.OK && q.Start < h.Start && q.End > h.Start {
				across++
			}
		}
	}
	if across < lossUpgrades {
		t.Errorf("only %d /slow requests were in flight at a SIGHUP, want at least one per upgrade", across)
	}
	t.Logf("/slow requests in flight at a SIGHUP and completed: %d", across)
	for _, d := range s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "drain finished" && l.Str("reason") == "handoff" }) {
		if d.Int("generation") == lossUpgrades/2 {
			t.Logf("drain of generation %d: %s", lossUpgrades/2, d.Raw)
		}
		if d.Int("force_closed") != 0 {
			t.Errorf("generation %d force-closed %d connections", d.Int("generation"), d.Int("force_closed"))
		}
	}
}
