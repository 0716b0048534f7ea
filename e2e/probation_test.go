package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// With a probation window, a new generation serves a share of live traffic
// beside the old one before it reports ready. One that crashes 500 ms
// after it starts serving fails the upgrade like a crash before ready;
// the old generation never stopped serving. Only requests on connections
// the crashed process held may fail, and the test reports how many did.
func TestProbationCatchesEarlyCrash(t *testing.T) {
	s := start(t, startOptions{
		args: []string{"-probation", "2s", "-upgrade-timeout", "20s", "-log-level", "debug"},
		env:  []string{"HANDOFF_FAULT_EXIT_AFTER=500ms"},
	})
	pid := s.waitReady(1)
	stop, tl := backgroundLoad(s.addr)
	waitRequests(t, tl, 200)

	s.install(vFaults)
	s.signal(pid, syscall.SIGHUP)
	ev := s.logs.Wait(t, time.Minute, "the upgrade to fail", func(l testkit.LogLine) bool {
		return l.Msg() == failedEvent && l.Int("pid") == pid
	})
	waitRequests(t, tl, total(tl)+200)
	stop()

	if ev.Str("exit_status") != "exit status 3" {
		t.Errorf("failed upgrade: exit_status %q, want exit status 3 (the injected crash)", ev.Str("exit_status"))
	}
	child := ev.Int("child_pid")
	tl.mu.Lock()
	servedByChild := tl.gens["2"]
	lost := append([]string(nil), tl.lost...)
	tl.mu.Unlock()
	if !servedByChild {
		t.Error("the new generation answered no request during its probation; it should serve a share of the traffic")
	}
	held := s.checkLost(t, child, lost)
	t.Logf("probation crash: %d requests, %d failed, all on the %d connections the crashed process (pid %d) had accepted",
		total(tl), tl.failures(), held, child)
	if tl.failures() != len(lost) {
		t.Errorf("%d failures but %d lost connections: a failure that is not a lost connection: %v", tl.failures(), len(lost), tl.examples)
	}
	info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
	if info.Generation != 1 || info.PID != pid {
		t.Errorf("after the failed probation generation %d pid %d serves, want 1 %d", info.Generation, info.PID, pid)
	}

	// A good binary passes its probation and takes over.
	s.install(v2)
	s.upgrade(pid, 2)
	if len(s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "probation passed" && l.Int("generation") == 2 })) != 1 {
		t.Error("generation 2 took over without logging probation passed")
	}
}
