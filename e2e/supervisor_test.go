package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"golang.org/x/sys/unix"
)

// The tests of supervisor mode (server -supervise): the process the test
// starts stays for the life of the service, holds the sockets and starts
// every generation as its child. It reaps its children itself, so the
// harness cannot wait for a generation by pid: these tests learn how each
// one ended from the supervisor's "generation exited" events.

// supervisorPID is the pid of the supervisor: the process the test started.
func (s *server) supervisorPID() int { return s.cmd.Process.Pid }

// isSupervisor matches the supervisor's own events.
func isSupervisor(l testkit.LogLine) bool { return l.Str("component") == "supervisor" }

// genExit waits for the supervisor to report the end of generation gen,
// and returns its exit status as the supervisor logged it ("exit status 0",
// "signal: killed").
func (s *server) genExit(gen int) string {
	s.t.Helper()
	l := s.logs.Wait(s.t, 2*time.Minute, fmt.Sprintf("the supervisor's event of the exit of generation %d", gen), func(l testkit.LogLine) bool {
		return isSupervisor(l) && l.Int("child_generation") == gen &&
			(l.Msg() == "generation exited" || l.Msg() == "the serving generation exited unexpectedly")
	})
	return l.Str("exit_status")
}

// takenOver waits for the supervisor to commit a generation newer than
// after, and returns its number and pid (as the supervisor sees it). It
// also waits for that generation's own ready event.
func (s *server) takenOver(after int) (gen, pid int) {
	s.t.Helper()
	l := s.logs.Wait(s.t, 2*time.Minute, fmt.Sprintf("a generation after %d to take over", after), func(l testkit.LogLine) bool {
		return isSupervisor(l) && l.Msg() == "child ready" && l.Int("new_generation") > after
	})
	gen, pid = l.Int("new_generation"), l.Int("new_pid")
	s.waitReady(gen)
	return gen, pid
}

// supervisedUpgrade runs trigger (a SIGHUP, a ctl upgrade) and waits for
// the generation after from to take over and for from to exit with status
// 0. It returns the new generation and its pid.
func (s *server) supervisedUpgrade(from int, trigger func()) (gen, pid int) {
	s.t.Helper()
	trigger()
	gen, pid = s.takenOver(from)
	if st := s.genExit(from); st != "exit status 0" {
		s.t.Errorf("generation %d after handing over to %d: %s, want exit status 0", from, gen, st)
	}
	return gen, pid
}

// procStartTime is the start time of pid in clock ticks since boot: with
// the pid, it names one process (a pid alone may be reused).
func procStartTime(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which may hold spaces, start
	// with field 3; the start time is field 22.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 20 {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return f[19]
}

// supervisorStatus is the part of GET /status that describes the
// supervisor.
type supervisorStatus struct {
	PID        int    `json:"pid"`
	Generation int    `json:"generation"`
	Version    string `json:"version"`
	Mode       string `json:"mode"`
	Supervisor *struct {
		PID     int    `json:"pid"`
		Version string `json:"version"`
		Execs   int    `json:"execs"`
	} `json:"supervisor"`
}

func (s *server) status() supervisorStatus {
	s.t.Helper()
	out, errOut, st := s.ctl("status", "-json")
	if st != 0 {
		s.t.Fatalf("server ctl status -json: exit status %d: %s%s", st, out, errOut)
	}
	var res supervisorStatus
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		s.t.Fatalf("server ctl status -json printed %q: %v", out, err)
	}
	return res
}

// ctlUpgrade runs server ctl upgrade -json and returns the generation that
// took over.
func (s *server) ctlUpgrade() (gen int, version string) {
	s.t.Helper()
	out, errOut, st := s.ctl("upgrade", "-json")
	if st != 0 {
		s.t.Fatalf("server ctl upgrade: exit status %d: %s%s", st, out, errOut)
	}
	var res struct {
		Generation int    `json:"generation"`
		Version    string `json:"version"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		s.t.Fatalf("server ctl upgrade -json printed %q: %v", out, err)
	}
	return res.Generation, res.Version
}

// As PID 1 of a new PID namespace (a container), the supervisor hot
// restarts where a plain server must refuse to (TestPID1RefusesHotRestart):
// 10 SIGHUPs bring 10 generations, each old one exits 0, PID 1 stays the
// same process, and no request of the load fails. SIGTERM then stops the
// service: a request in flight is answered and PID 1 exits 0.
func TestSupervisorAsPID1(t *testing.T) {
	if out, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("unshare --pid --fork --mount-proc does not work here (%v: %s); run as root on Linux to test PID 1", err, strings.TrimSpace(string(out)))
	}
	const upgrades = 10
	began := time.Now()
	s := start(t, startOptions{supervise: true, prefix: []string{"unshare", "--pid", "--fork", "--mount-proc", "--kill-child"}})
	sup := childOf(t, s.supervisorPID()) // PID 1, as this test sees it
	born := procStartTime(t, sup)
	if l := s.logs.Wait(t, time.Minute, "supervisor starting", func(l testkit.LogLine) bool {
		return isSupervisor(l) && l.Msg() == "supervisor starting"
	}); l.Int("pid") != 1 {
		t.Fatalf("the supervisor's pid inside the namespace = %d, want 1", l.Int("pid"))
	}

	stop, tl := backgroundLoad(s.addr)
	waitRequests(t, tl, 200)
	gen := 1
	for range upgrades {
		next, _ := s.supervisedUpgrade(gen, func() { s.signal(sup, syscall.SIGHUP) })
		if next != gen+1 {
			t.Errorf("SIGHUP after generation %d brought generation %d", gen, next)
		}
		gen = next
	}
	waitRequests(t, tl, total(tl)+200)
	stop()
	t.Logf("%d SIGHUPs as PID 1: %d requests, %d failed\n%s", upgrades, total(tl), tl.failures(), tl)
	if tl.failures() != 0 {
		t.Errorf("%d requests failed across %d upgrades as PID 1, want 0: %v", tl.failures(), upgrades, tl.examples)
	}

	if got := childOf(t, s.supervisorPID()); got != sup || procStartTime(t, sup) != born {
		t.Errorf("PID 1 is pid %d (started at tick %s) after the upgrades, was %d (tick %s): want the same process",
			got, procStartTime(t, got), sup, born)
	}
	for _, l := range s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "starting" && l.Str("mode") == "supervised" }) {
		if l.Int("parent_pid") != 1 {
			t.Errorf("generation %d started with parent pid %d, want 1: %s", l.Int("generation"), l.Int("parent_pid"), l.Raw)
		}
	}
	for _, l := range s.logs.Find(isSupervisor) {
		if l.Int("pid") != 1 {
			t.Errorf("a supervisor event with pid %d, want 1: %s", l.Int("pid"), l.Raw)
		}
	}
	rss := rssKiB(t, sup)

	// SIGTERM with a request in flight, on a connection the serving
	// generation holds.
	c := oneConnClient()
	if info, _ := getRoot(t, c, s.url("/")); info.Generation != gen {
		t.Errorf("generation %d serves, want %d", info.Generation, gen)
	}
	req, _ := http.NewRequest("GET", s.url("/slow?ms=1500"), nil)
	slow := sendWhenWritten(t, c, req)
	s.signal(sup, syscall.SIGTERM)
	r := <-slow
	if r.err != nil || r.status != http.StatusOK {
		t.Errorf("GET /slow?ms=1500 in flight at SIGTERM: status %d, error %v; want 200", r.status, r.err)
	}
	if st := s.waitExit(s.supervisorPID(), 2*time.Minute); st != 0 {
		t.Errorf("PID 1 (the supervisor) after SIGTERM: exit status %d, want 0", st)
	}
	if st := s.genExit(gen); st != "exit status 0" {
		t.Errorf("the last generation after SIGTERM: %s, want exit status 0", st)
	}
	t.Logf("supervisor as PID 1: VmRSS %d KiB after %d upgrades; test took %v", rss, upgrades, time.Since(began).Round(time.Millisecond))
}

// A bad deploy in supervisor mode never takes the service down: for a
// binary that exits at once, one that hangs, and one that crashes in its
// probation, server ctl upgrade exits 1 and names the cause, the old
// generation serves on through the attempt with no request failing, and a
// good upgrade then works.
func TestSupervisorBadDeploys(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		env    []string
		deploy func(s *server)
		cause  []string // what ctl upgrade and the supervisor's Warn must say
		// probation: the bad generation serves beside the old one, so
		// requests on the connections it accepted may fail.
		probation bool
	}{{
		name:   "exits before ready",
		args:   []string{"-upgrade-timeout", "3s"},
		deploy: func(s *server) { s.installScript("echo 'fatal: open database: disk I/O error' >&2\nexit 3") },
		cause:  []string{"exit status 3", "disk I/O error"},
	}, {
		name:   "hangs, never ready",
		args:   []string{"-upgrade-timeout", "3s"},
		deploy: func(s *server) { s.installScript("echo 'starting' >&2\nexec sleep 600") },
		cause:  []string{"not ready in time", "starting"},
	}, {
		name: "crashes in probation",
		// The probation and the start-up of the good binary after it must
		// fit in the upgrade timeout on a loaded machine.
		args:      []string{"-probation", "2s", "-upgrade-timeout", "20s", "-log-level", "debug"},
		env:       []string{"HANDOFF_FAULT_EXIT_AFTER=500ms"},
		deploy:    func(s *server) { s.install(vFaults) },
		cause:     []string{"exit status 3"},
		probation: true,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			began := time.Now()
			s := start(t, startOptions{supervise: true, args: tc.args, env: tc.env})
			pid := s.waitReady(1)
			stop, tl := backgroundLoad(s.addr)
			waitRequests(t, tl, 200)

			tc.deploy(s)
			out, errOut, st := s.ctl("upgrade")
			if st != 1 {
				t.Errorf("server ctl upgrade of a bad binary: exit status %d (%s), want 1", st, out)
			}
			for _, want := range tc.cause {
				if !strings.Contains(errOut, want) {
					t.Errorf("server ctl upgrade does not say %q: %s", want, errOut)
				}
			}
			ev := s.logs.Wait(t, time.Minute, "the supervisor's failed upgrade event", func(l testkit.LogLine) bool {
				return isSupervisor(l) && l.Msg() == failedEvent
			})
			for _, want := range tc.cause {
				if !strings.Contains(ev.Raw, want) {
					t.Errorf("the supervisor's failed upgrade event does not say %q: %s", want, ev.Raw)
				}
			}
			if ev.Str("level") != "warn" {
				t.Errorf("failed upgrade logged at %q, want warn", ev.Str("level"))
			}
			waitRequests(t, tl, total(tl)+200)
			stop()

			tl.mu.Lock()
			lost := append([]string(nil), tl.lost...)
			servedByBad := tl.gens["2"]
			tl.mu.Unlock()
			if tc.probation {
				bad := ev.Int("child_pid")
				if !servedByBad {
					t.Error("the new generation answered no request during its probation; it should serve a share of the traffic")
				}
				held := s.checkLost(t, bad, lost)
				if tl.failures() != len(lost) {
					t.Errorf("%d failures but %d lost connections: a failure that is not a lost connection: %v", tl.failures(), len(lost), tl.examples)
				}
				t.Logf("%s: %d requests, %d failed, all on the %d connections the crashed process (pid %d) had accepted",
					tc.name, total(tl), tl.failures(), held, bad)
			} else if tl.failures() != 0 {
				t.Errorf("%d requests failed during the bad upgrade, want 0: %v", tl.failures(), tl.examples)
			}
			t.Logf("%s: %d requests during the attempt, %d failed; server ctl upgrade: %s\n%s",
				tc.name, total(tl), tl.failures(), strings.TrimSpace(errOut), tl)
			info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
			if info.Generation != 1 || info.PID != pid {
				t.Errorf("after the failed upgrade generation %d pid %d serves, want 1 %d", info.Generation, info.PID, pid)
			}

			// A good binary then takes over, and the old generation exits 0.
			s.install(v2)
			gen, version := s.ctlUpgrade()
			if version != v2 {
				t.Errorf("good upgrade after the bad one: version %s, want %s", version, v2)
			}
			s.waitReady(gen)
			if st := s.genExit(1); st != "exit status 0" {
				t.Errorf("generation 1 after handing over: %s, want exit status 0", st)
			}
			t.Logf("%s: took %v", tc.name, time.Since(began).Round(time.Millisecond))
		})
	}
}

// When the binary at its path has changed, an upgrade also replaces the
// supervisor's own code, in place: its pid stays, ctl status names its new
// version and one exec, the new generation serves, and no request fails.
// The re-executed supervisor then upgrades and stops as before.
func TestSupervisorUpgradesItself(t *testing.T) {
	began := time.Now()
	s := start(t, startOptions{supervise: true})
	sup := s.supervisorPID()
	born := procStartTime(t, sup)
	rssBefore := rssKiB(t, sup)
	if st := s.status(); st.Mode != "supervised" || st.Supervisor == nil || st.Supervisor.PID != sup ||
		st.Supervisor.Version != v1 || st.Supervisor.Execs != 0 {
		t.Fatalf("ctl status before the upgrade: %+v, supervisor %+v; want mode supervised, supervisor pid %d, %s, 0 execs",
			st, st.Supervisor, sup, v1)
	}
	stop, tl := backgroundLoad(s.addr)
	waitRequests(t, tl, 200)

	s.install(v2)
	gen, pid := s.supervisedUpgrade(1, func() {
		if gen, version := s.ctlUpgrade(); gen != 2 || version != v2 {
			t.Errorf("server ctl upgrade: generation %d version %s, want 2 %s", gen, version, v2)
		}
	})
	ev := s.logs.Wait(t, time.Minute, "the supervisor's new code", func(l testkit.LogLine) bool {
		return isSupervisor(l) && l.Msg() == "supervisor replaced its own binary"
	})
	if ev.Int("pid") != sup || ev.Str("version") != v2 || ev.Str("old_version") != v1 {
		t.Errorf("after the exec in place: %s; want pid %d, version %s, old_version %s", ev.Raw, sup, v2, v1)
	}
	if procStartTime(t, sup) != born {
		t.Errorf("pid %d is another process after the supervisor's upgrade", sup)
	}
	// The generations learn of the supervisor's new code by a message.
	testkit.WaitFor(t, 30*time.Second, "ctl status naming the supervisor's new version", func() error {
		st := s.status()
		if st.Supervisor == nil || st.Supervisor.PID != sup || st.Supervisor.Version != v2 || st.Supervisor.Execs != 1 ||
			st.Version != v2 || st.PID != pid || st.Generation != gen {
			return fmt.Errorf("generation %d pid %d version %s serves, supervisor %+v; want generation %d pid %d %s, supervisor pid %d %s 1 exec",
				st.Generation, st.PID, st.Version, st.Supervisor, gen, pid, v2, sup, v2)
		}
		return nil
	})
	rssAfter := rssKiB(t, sup)

	// The new code holds the sockets and the links: one more upgrade
	// (same binary, no exec), under load.
	gen, _ = s.supervisedUpgrade(gen, func() { s.signal(sup, syscall.SIGHUP) })
	waitRequests(t, tl, total(tl)+200)
	stop()
	t.Logf("self-upgrade: %d requests, %d failed\n%s", total(tl), tl.failures(), tl)
	if tl.failures() != 0 {
		t.Errorf("%d requests failed across the supervisor's upgrade, want 0: %v", tl.failures(), tl.examples)
	}
	if st := s.status(); st.Supervisor == nil || st.Supervisor.Execs != 1 || st.Generation != gen {
		t.Errorf("after an upgrade with the same binary: generation %d, supervisor %+v; want generation %d, still 1 exec",
			st.Generation, st.Supervisor, gen)
	}

	s.signal(sup, syscall.SIGTERM)
	if st := s.waitExit(sup, 2*time.Minute); st != 0 {
		t.Errorf("the re-executed supervisor after SIGTERM: exit status %d, want 0", st)
	}
	if st := s.genExit(gen); st != "exit status 0" {
		t.Errorf("the last generation after SIGTERM: %s, want exit status 0", st)
	}
	t.Logf("supervisor VmRSS: %d KiB before its upgrade, %d KiB after; test took %v", rssBefore, rssAfter, time.Since(began).Round(time.Millisecond))
}

// SIGKILL of the serving generation. With -restart-on-crash the supervisor
// reports it and starts a new one; it holds the listening socket all the
// while, so a client that connects meanwhile waits in the accept queue
// instead of being refused. Only requests on connections the killed
// process held may fail. Without the flag, the supervisor exits 1 and
// says why.
func TestSupervisorGenerationKilled(t *testing.T) {
	t.Run("restart on crash", func(t *testing.T) {
		began := time.Now()
		s := start(t, startOptions{supervise: true, args: []string{"-restart-on-crash", "-log-level", "debug"}})
		pid := s.waitReady(1)
		stop, tl := backgroundLoad(s.addr)
		waitRequests(t, tl, 200)

		killedAt := time.Now()
		s.signal(pid, syscall.SIGKILL)
		ev := s.logs.Wait(t, time.Minute, "the supervisor's report of the crash", func(l testkit.LogLine) bool {
			return isSupervisor(l) && l.Msg() == "the serving generation exited unexpectedly"
		})
		if ev.Int("child_pid") != pid || ev.Str("exit_status") != "signal: killed" || ev.Str("level") != "error" {
			t.Errorf("crash reported as %s; want an error naming pid %d and signal: killed", ev.Raw, pid)
		}
		gen, newPID := s.takenOver(1)
		restartedIn := time.Since(killedAt)
		waitRequests(t, tl, total(tl)+200)
		stop()

		tl.mu.Lock()
		lost := append([]string(nil), tl.lost...)
		refused := 0
		for _, m := range tl.failed {
			refused += m["refused"]
		}
		tl.mu.Unlock()
		t.Logf("SIGKILL of generation 1 (pid %d): generation %d (pid %d) serves %v later; %d requests, %d failed, on %d connections the killed process held\n%s",
			pid, gen, newPID, restartedIn.Round(time.Millisecond), total(tl), tl.failures(), len(lost), tl)
		if refused != 0 {
			t.Errorf("%d connections refused while no generation ran: the supervisor must hold the listening socket", refused)
		}
		s.checkLost(t, pid, lost)
		if tl.failures() != len(lost) {
			t.Errorf("%d failures, %d on connections the killed process held: a failure of a new connection: %v",
				tl.failures(), len(lost), tl.examples)
		}
		if tl.okCount("h1-newconn") == 0 || !tl.gens[strconv.Itoa(gen)] {
			t.Errorf("no answer from the restarted generation %d", gen)
		}
		t.Logf("took %v", time.Since(began).Round(time.Millisecond))
	})

	t.Run("no restart", func(t *testing.T) {
		s := start(t, startOptions{supervise: true})
		pid := s.waitReady(1)
		stop, tl := backgroundLoad(s.addr)
		waitRequests(t, tl, 200)
		s.signal(pid, syscall.SIGKILL)
		st := s.waitExit(s.supervisorPID(), time.Minute)
		stop()
		// The service is gone: requests fail from here, and the test
		// counts them only to show the load ran.
		t.Logf("no restart: %d requests, %d failed after the service ended", total(tl), tl.failures())
		if st != 1 {
			t.Errorf("supervisor after its only generation was killed: exit status %d, want 1", st)
		}
		say := fmt.Sprintf("the serving generation (pid %d) ended with signal: killed", pid)
		if len(s.logs.Find(func(l testkit.LogLine) bool {
			return strings.HasPrefix(l.Raw, "server: ") && strings.Contains(l.Raw, say)
		})) != 1 {
			t.Errorf("the supervisor's last words do not say %q", say)
		}
		if len(s.logs.Find(func(l testkit.LogLine) bool {
			return isSupervisor(l) && l.Msg() == "the serving generation exited unexpectedly" && l.Str("level") == "error"
		})) != 1 {
			t.Error("no error event for the generation that exited unexpectedly")
		}
		if c, err := net.DialTimeout("tcp", s.addr, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("%s accepts connections after the supervisor exited", s.addr)
		}
	})
}

// In a terminal: typed at an interactive shell, the supervisor stays in
// the foreground across upgrades, every log line that reaches the terminal
// is in the human console format (issue 17: a generation started by an
// upgrade must not switch to JSON), and Ctrl-C stops the service and gives
// the prompt back.
func TestSupervisorInTerminal(t *testing.T) {
	began := time.Now()
	term, s, cmdLine, mark := startInTerminal(t, "-supervise")
	addr := s.addr
	st := s.status()
	if st.Supervisor == nil {
		t.Fatalf("ctl status of the server in the terminal: no supervisor: %+v", st)
	}
	sup := st.Supervisor.PID
	pids := map[int]bool{sup: true, st.PID: true}
	t.Cleanup(func() { // if the test failed before Ctrl-C did its work
		for pid := range pids {
			// Only a process of this server: its pid may have been reused.
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), addr) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	stop, tl := backgroundLoad(addr)
	waitRequests(t, tl, 200)
	for want := 2; want <= 4; want++ {
		if gen, _ := s.ctlUpgrade(); gen != want {
			t.Errorf("server ctl upgrade in the terminal: generation %d, want %d", gen, want)
		}
		pids[s.status().PID] = true
	}
	waitRequests(t, tl, total(tl)+200)
	stop()
	t.Logf("terminal: %d requests across 3 upgrades, %d failed", total(tl), tl.failures())
	if tl.failures() != 0 {
		t.Errorf("%d requests failed across the upgrades, want 0: %v\n%s", tl.failures(), tl.examples, tl)
	}
	rss := rssKiB(t, sup)
	last := s.status().PID
	// The shell waits for its foreground job: no prompt while the service
	// runs, upgrades included (in chain mode it came back at the first).
	beforeCtrlC := term.mark()
	if prompts := strings.Count(term.since(mark)[:beforeCtrlC-mark], "\n$ "); prompts != 0 {
		t.Errorf("the shell showed its prompt %d times while the service ran", prompts)
	}

	term.write(t, "\x03")
	term.waitFor(t, "supervisor exit", "the supervisor's exit after Ctrl-C")
	term.waitFor(t, "$ ", "the prompt after Ctrl-C")
	term.write(t, "echo done-$((40+2))\n")
	term.waitFor(t, "done-42", "the shell to run a command after Ctrl-C")
	if err := syscall.Kill(sup, 0); err != syscall.ESRCH {
		t.Errorf("the supervisor (pid %d) after Ctrl-C and a new prompt: kill -0 = %v, want no such process", sup, err)
	}
	if err := syscall.Kill(last, 0); err != syscall.ESRCH {
		t.Errorf("the last generation (pid %d) after Ctrl-C and a new prompt: kill -0 = %v, want no such process", last, err)
	}
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("%s accepts connections after Ctrl-C", addr)
	}

	// What the terminal showed from the command line on: only console log
	// lines, from the supervisor and from every generation, before and
	// after the upgrades.
	out := term.since(mark)
	out = out[:strings.Index(out, "echo done-")]
	gens := map[string]int{}
	var other []string
	for _, line := range strings.Split(out, "\n") {
		// The terminal echoes Ctrl-C as ^C, before whatever comes next.
		line = strings.TrimPrefix(strings.TrimRight(ansi.ReplaceAllString(line, ""), "\r"), "^C")
		switch {
		case strings.HasPrefix(strings.TrimSpace(line), "{"):
			t.Errorf("a JSON line in the terminal: %s", line)
		case consoleLine.MatchString(line):
			if m := genField.FindStringSubmatch(line); m != nil {
				gens[m[1]]++
			}
		case line == "" || strings.HasSuffix(line, cmdLine) || strings.TrimSpace(line) == "$":
		default:
			other = append(other, line)
		}
	}
	for _, g := range []string{"0", "1", "2", "3", "4"} {
		if gens[g] == 0 {
			t.Errorf("no console log line of generation %s reached the terminal (lines by generation: %v)", g, gens)
		}
	}
	if len(other) > 0 {
		t.Errorf("lines in the terminal that are not console log lines: %q", other)
	}
	if t.Failed() {
		t.Logf("the terminal showed:\n%s", term.since(0))
	}
	t.Logf("terminal: console lines by generation %v; supervisor VmRSS %d KiB; took %v", gens, rss, time.Since(began).Round(time.Millisecond))
}

var (
	ansi        = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)
	consoleLine = regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} (TRC|DBG|INF|WRN|ERR|FTL|PNC) `)
	genField    = regexp.MustCompile(` generation=(\d+)`)
)

// terminal is an interactive shell in a pseudo-terminal, and everything it
// showed.
type terminal struct {
	master  *os.File
	mu      sync.Mutex
	out     []byte
	seen    int           // how far waitFor has matched
	changed chan struct{} // closed and replaced when out grows
	done    chan struct{} // closed when the terminal has no more output
}

// startShell runs bash -i in a new pseudo-terminal, as its controlling
// terminal, in dir. The shell exits at the end of the test.
func startShell(t *testing.T, dir string) *terminal {
	t.Helper()
	master, tty, err := openPTY()
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	cmd := exec.Command("bash", "--norc", "--noprofile", "-i")
	cmd.Dir = dir
	cmd.Env = append(baseEnv(), "TERM=dumb", "PS1=$ ", "HISTFILE=")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		master.Close()
		tty.Close()
		t.Fatalf("start bash in a pseudo-terminal: %v", err)
	}
	tty.Close()
	term := &terminal{master: master, changed: make(chan struct{}), done: make(chan struct{})}
	go func() { // ends when every process let go of the terminal, or it is closed
		defer close(term.done)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			term.mu.Lock()
			term.out = append(term.out, buf[:n]...)
			close(term.changed)
			term.changed = make(chan struct{})
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		master.Write([]byte("exit\n"))
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		master.Close()
		<-term.done
	})
	return term
}

// openPTY opens a new pseudo-terminal pair: /dev/ptmx, unlocked, and the
// /dev/pts file of its other side.
func openPTY() (master, tty *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	raw, err := master.SyscallConn()
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	var n uint32
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr == nil {
			n, ierr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
		}
	}); err != nil || ierr != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlock /dev/ptmx: %v %v", err, ierr)
	}
	tty, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, tty, nil
}

func (term *terminal) write(t *testing.T, s string) {
	t.Helper()
	if _, err := term.master.Write([]byte(s)); err != nil {
		t.Fatalf("type %q: %v", s, err)
	}
}

// mark is the position of the output so far.
func (term *terminal) mark() int {
	term.mu.Lock()
	defer term.mu.Unlock()
	return len(term.out)
}

func (term *terminal) since(mark int) string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return string(term.out[mark:])
}

// waitFor waits for s to appear in the output after the last waitFor
// matched, and moves past it.
func (term *terminal) waitFor(t *testing.T, s, what string) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		term.mu.Lock()
		i := strings.Index(string(term.out[term.seen:]), s)
		if i >= 0 {
			term.seen += i + len(s)
		}
		changed := term.changed
		term.mu.Unlock()
		if i >= 0 {
			return
		}
		select {
		case <-changed:
		case <-term.done:
			t.Fatalf("waiting for %s (%q): the terminal closed; it showed:\n%s", what, s, term.since(0))
		case <-deadline:
			t.Fatalf("waiting for %s (%q): not seen within 2m; the terminal showed:\n%s", what, s, term.since(0))
		}
	}
}

// A configuration change inside a running container (deploy/kubernetes:
// the ConfigMap changes, then ctl upgrade through kubectl exec) is a hot
// restart under the supervisor: /readyz, which a readiness probe polls,
// answers 200 throughout, and the new generation runs the new settings.
func TestReadyzStaysGreenAcrossConfigReload(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	conf := filepath.Join(dir, "handoff.toml")
	if err := os.WriteFile(conf, []byte("log-level = \"info\"\nprobation = \"1s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, startOptions{dir: dir, supervise: true, args: []string{"-config", conf}})
	stop, tl := backgroundLoad(s.addr)
	defer stop()
	probe := make(chan [2]int, 1)
	done := make(chan struct{})
	go func() { // a readiness probe: a new connection every 5 ms until done
		ok, bad := 0, 0
		c := testkit.NewConnClient()
		for {
			select {
			case <-done:
				probe <- [2]int{ok, bad}
				return
			case <-time.After(5 * time.Millisecond):
			}
			resp, err := c.Get(s.url("/readyz"))
			if err != nil || resp.StatusCode != 200 {
				bad++
			} else {
				ok++
			}
			if resp != nil {
				resp.Body.Close()
			}
		}
	}()
	waitRequests(t, tl, 200)
	if err := os.WriteFile(conf, []byte("log-level = \"info\"\nprobation = \"1500ms\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, st := s.ctl("upgrade", "-config", conf)
	if st != 0 {
		t.Fatalf("ctl upgrade: %d: %s", st, errOut)
	}
	// The new generation runs the new settings.
	p := s.logs.Wait(t, time.Minute, "the new generation's probation", func(l testkit.LogLine) bool {
		return l.Msg() == "probation started" && l.Int("generation") == 2
	})
	if w := p.Int("window_ms"); w != 1500 {
		t.Errorf("the new generation's probation is %d ms, want the reloaded file's 1500", w)
	}
	waitRequests(t, tl, total(tl)+200)
	close(done)
	pr := <-probe
	t.Logf("readiness probe across the reload: %d answered 200, %d not; load: %d requests, %d failed", pr[0], pr[1], total(tl), tl.failures())
	if pr[1] != 0 || pr[0] == 0 {
		t.Errorf("readiness probe: %d answers of 200, %d other outcomes; want only 200s", pr[0], pr[1])
	}
	if n := tl.failures(); n > 0 {
		t.Errorf("%d requests failed, want 0: %v", n, tl.examples)
	}
}

// In chain mode too, every generation logs in the console format the
// first one chose for the terminal, although its own stderr is a pipe
// through the previous generation until it is ready (issue: the log
// switched to JSON after the first upgrade).
func TestChainKeepsConsoleLogsInTerminal(t *testing.T) {
	term, s, _, mark := startInTerminal(t)
	addr := s.addr
	for want := 2; want <= 3; want++ {
		if gen, _ := s.ctlUpgrade(); gen != want {
			t.Fatalf("server ctl upgrade in the terminal: generation %d, want %d", gen, want)
		}
	}
	if _, errOut, st := s.ctl("shutdown"); st != 0 {
		t.Fatalf("ctl shutdown: %d: %s", st, errOut)
	}
	term.waitFor(t, "exit", "the last generation's exit")
	testkit.WaitFor(t, time.Minute, "the port to close", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return errors.New("still accepting")
		}
		return nil
	})
	gens := map[string]int{}
	for _, line := range strings.Split(term.since(mark), "\n") {
		line = strings.TrimRight(ansi.ReplaceAllString(line, ""), "\r")
		line = strings.TrimPrefix(line, "$ ")
		switch {
		case strings.HasPrefix(strings.TrimSpace(line), "{"):
			t.Errorf("a JSON line in the terminal: %s", line)
		case consoleLine.MatchString(line):
			if m := genField.FindStringSubmatch(line); m != nil {
				gens[m[1]]++
			}
		}
	}
	for _, g := range []string{"1", "2", "3"} {
		if gens[g] == 0 {
			t.Errorf("no console log line of generation %s reached the terminal (lines by generation: %v)", g, gens)
		}
	}
	if t.Failed() {
		t.Logf("the terminal showed:\n%s", term.since(0))
	}
}

// startInTerminal starts a shell in a pseudo-terminal, types the server's
// command line with flags, and waits until the server answers. It returns
// the terminal, the server, the command line and the terminal's mark at
// the command line.
func startInTerminal(t *testing.T, flags ...string) (*terminal, *server, string, int) {
	t.Helper()
	dir := testkit.ShortTempDir(t)
	installBinary(t, binary(v1), filepath.Join(dir, "server"))
	addr := testkit.FreeAddr(t)
	term := startShell(t, dir)
	term.waitFor(t, "$ ", "the first prompt")
	cmdLine := strings.Join(append([]string{"./server"}, append(flags, "-addr", addr)...), " ")
	mark := term.mark()
	term.write(t, cmdLine+"\n")
	s := &server{t: t, dir: dir, bin: filepath.Join(dir, "server"), addr: addr}
	testkit.WaitFor(t, 2*time.Minute, "the server started in the terminal answering", func() error {
		resp, err := testkit.NewConnClient().Get(s.url("/"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return term, s, cmdLine, mark
}
