package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// lossUpgrades is how many times the loss test upgrades under load.
const lossUpgrades = 20

// The loss test: the real binary through lossUpgrades upgrades while every
// kind of client sends load, counting every outcome. Zero requests may
// fail, of any kind; every generation must answer.
func TestLossUnderRestarts(t *testing.T) {
	s := start(t, startOptions{args: []string{"-log-level", "info"}})
	pid := s.waitReady(1)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	tl := newTally()
	var wg sync.WaitGroup
	spawn := func(n int, f func(i int)) {
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(i)
			}()
		}
	}
	spawn(6, func(i int) { keepAliveClient(ctx, s.addr, tl, uint64(i)) })
	spawn(2, func(int) { newConnClient(ctx, s.addr, tl) })
	spawn(2, func(int) { h2Client(ctx, s.addr, tl, 3) })
	spawn(4, func(i int) { slowClient(ctx, s.addr, tl, uint64(i)) })
	spawn(2, func(int) { sseClient(ctx, s.addr, tl) })
	spawn(2, func(i int) { wsClient(ctx, s.addr, tl, uint64(i)) })
	kinds := []string{"h1-keepalive", "h1-newconn", "h2c", "h1-slow", "sse", "websocket"}
	waitAllKinds := func(what string) {
		base := map[string]int{}
		for _, k := range kinds {
			base[k] = tl.okCount(k)
		}
		poll(t, time.Minute, what, func() error {
			for _, k := range kinds {
				if tl.okCount(k) <= base[k] {
					return fmt.Errorf("no %s success yet", k)
				}
			}
			return nil
		})
	}
	waitAllKinds("every client kind served before the upgrades")

	var hups []time.Time
	for g := 2; g <= lossUpgrades+1; g++ {
		hups = append(hups, time.Now())
		pid = s.upgrade(pid, g)
	}
	waitAllKinds("every client kind served by the last generation")
	cancel()
	wg.Wait()

	t.Logf("after %d upgrades:\n%s", lossUpgrades, tl)
	for _, e := range tl.examples {
		t.Log("failure:", e)
	}
	if n := tl.failures(); n > 0 {
		t.Errorf("%d requests failed across %d upgrades, want 0", n, lossUpgrades)
	}
	if len(tl.gens) != lossUpgrades+1 {
		t.Errorf("%d generations answered, want %d (the upgrades plus one)", len(tl.gens), lossUpgrades+1)
	}
	for _, k := range []string{"sse", "websocket"} {
		if tl.resumes[k] < lossUpgrades {
			t.Errorf("%s clients resumed %d times across %d upgrades; each upgrade should move them", k, tl.resumes[k], lossUpgrades)
		}
	}
	across := 0
	for _, h := range hups {
		for _, sp := range tl.spans {
			if sp[0].Before(h) && sp[1].After(h) {
				across++
			}
		}
	}
	if across < lossUpgrades {
		t.Errorf("only %d /slow requests were in flight at a SIGHUP, want at least one per upgrade", across)
	}
	t.Logf("/slow requests in flight at a SIGHUP and completed: %d", across)
	for _, d := range s.logs.find(func(l logLine) bool { return l.msg() == "drain finished" && l.str("reason") == "handoff" }) {
		if d.int("generation") == lossUpgrades/2 {
			t.Logf("drain of generation %d: %s", lossUpgrades/2, d.raw)
		}
		if d.int("force_closed") != 0 {
			t.Errorf("generation %d force-closed %d connections", d.int("generation"), d.int("force_closed"))
		}
	}
}
