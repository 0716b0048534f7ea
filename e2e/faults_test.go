package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// Faults in the handoff window (issue 10). The rule they check: the old
// generation commits to leaving only after the new one has finished every
// step that can fail, and whichever process still holds the sockets keeps
// serving.

// mountTmpfs mounts a small tmpfs at dir for the test, or skips.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// A PID file the new generation cannot write fails the upgrade before the
// old generation leaves: the caller is told, and nobody stops serving.
func TestFaultPIDFileCannotBeWritten(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakFS func(t *testing.T, dir string)
		fix     func(t *testing.T, dir string)
		cause   string
	}{
		{
			name: "read-only",
			breakFS: func(t *testing.T, dir string) {
				if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
					t.Fatalf("remount read-only: %v: %s", err, out)
				}
			},
			fix: func(t *testing.T, dir string) {
				if out, err := exec.Command("mount", "-o", "remount,rw", dir).CombinedOutput(); err != nil {
					t.Fatalf("remount read-write: %v: %s", err, out)
				}
			},
			cause: "read-only file system",
		},
		{
			name: "full",
			breakFS: func(t *testing.T, dir string) {
				f, err := os.Create(filepath.Join(dir, "filler"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, 4096)
				for range 1000 {
					if _, err := f.Write(buf); err != nil {
						return // full
					}
				}
				t.Fatal("the 256k tmpfs never filled up")
			},
			fix: func(t *testing.T, dir string) {
				os.Remove(filepath.Join(dir, "filler"))
			},
			cause: "no space left on device",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testkit.ShortTempDir(t)
			run := filepath.Join(dir, "run")
			os.Mkdir(run, 0o755)
			mountTmpfs(t, run)
			s := start(t, startOptions{dir: dir, args: []string{"-pid-file", "run/server.pid"}})
			pid := s.waitReady(1)
			stop, tl := backgroundLoad(s.addr)
			waitRequests(t, tl, 200)

			tc.breakFS(t, run)
			s.install(v2)
			_, errOut, status := s.ctl("upgrade")
			waitRequests(t, tl, total(tl)+300)
			if status != 1 || !strings.Contains(errOut, "pid file") || !strings.Contains(errOut, tc.cause) {
				t.Errorf("ctl upgrade with a PID file that cannot be written: status %d, stderr %q; want 1 and the cause (%q)", status, errOut, tc.cause)
			}
			info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
			if info.PID != pid || info.Generation != 1 {
				t.Errorf("after the failed upgrade pid %d generation %d serves, want the old one (pid %d, generation 1)", info.PID, info.Generation, pid)
			}
			if got := readPIDFile(t, filepath.Join(run, "server.pid")); got != pid {
				t.Errorf("PID file names %d after the failed upgrade, want %d", got, pid)
			}

			tc.fix(t, run)
			next := s.upgrade(pid, 2)
			stop()
			t.Logf("%s: %d requests, %d failed; ctl upgrade said: %s", tc.name, total(tl), tl.failures(), strings.TrimSpace(errOut))
			if n := tl.failures(); n > 0 {
				t.Errorf("%d requests failed, want 0: %v", n, tl.examples)
			}
			if got := readPIDFile(t, filepath.Join(run, "server.pid")); got != next {
				t.Errorf("PID file names %d after the good upgrade, want %d", got, next)
			}
		})
	}
}

func readPIDFile(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// waitInFlight waits until the serving generation has at least n
// requests of the service in flight (control requests are counted apart).
func (s *server) waitInFlight(n int) {
	s.t.Helper()
	testkit.WaitFor(s.t, time.Minute, fmt.Sprintf("%d requests in flight", n), func() error {
		out, errOut, st := s.ctl("status", "-json")
		if st != 0 {
			return fmt.Errorf("ctl status: exit status %d: %s", st, errOut)
		}
		var got struct {
			InFlight int `json:"in_flight_requests"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			return fmt.Errorf("ctl status -json printed %q: %v", out, err)
		}
		if got.InFlight < n {
			return fmt.Errorf("%d in flight", got.InFlight)
		}
		return nil
	})
}

// checkLost checks that every connection in lost (the remote addresses of
// connections whose request failed) was the dead process's, the one the
// test killed or that crashed, and returns how many connections that
// process logged as accepted. A process logs "connection accepted" just
// after accept, so one that dies can take with it a connection it had not
// logged yet: a lost connection that no process logged is counted as the
// dead one's, and reported. A lost connection that a process still alive
// accepted is an error: only the dead process's connections may fail.
// The server must run with -log-level debug.
func (s *server) checkLost(t *testing.T, dead int, lost []string) (held int) {
	t.Helper()
	deadHeld, otherHeld := map[string]bool{}, map[string]int{}
	for _, l := range s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "connection accepted" }) {
		if l.Int("pid") == dead {
			deadHeld[l.Str("remote_addr")] = true
		} else {
			otherHeld[l.Str("remote_addr")] = l.Int("pid")
		}
	}
	unlogged := 0
	for _, addr := range lost {
		switch pid, ok := otherHeld[addr]; {
		case deadHeld[addr]:
		case ok:
			t.Errorf("a request failed on connection %s, which pid %d accepted, not the process that died (pid %d)", addr, pid, dead)
		default:
			unlogged++
		}
	}
	if unlogged > 0 {
		t.Logf("%d of the %d lost connections were logged by no process: accepted by pid %d just before it died", unlogged, len(lost), dead)
	}
	return len(deadHeld)
}

func logTime(t *testing.T, l testkit.LogLine) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, l.Str("time"))
	if err != nil {
		t.Fatalf("log line without a time: %s", l.Raw)
	}
	return ts
}

// The old generation killed while the new one is in probation: the new
// one finishes its start-up alone, serves, says why, and names itself as
// systemd's main process. Only requests on connections the killed
// process held may fail.
func TestFaultParentKilledBeforeHandoff(t *testing.T) {
	notify := newNotifySocket(t)
	s := start(t, startOptions{
		args: []string{"-probation", "2s", "-upgrade-timeout", "20s", "-log-level", "debug"},
		env:  []string{"NOTIFY_SOCKET=" + notify.path},
	})
	pid := s.waitReady(1)
	stop, tl := backgroundLoad(s.addr)
	waitRequests(t, tl, 200)

	s.install(v2)
	s.signal(pid, syscall.SIGHUP)
	child := s.logs.Wait(t, time.Minute, "the new generation's probation", func(l testkit.LogLine) bool {
		return l.Msg() == "probation started" && l.Int("generation") == 2
	}).Int("pid")
	waitRequests(t, tl, total(tl)+100)
	s.signal(pid, syscall.SIGKILL)
	s.logs.Wait(t, time.Minute, "the new generation to notice", func(l testkit.LogLine) bool {
		return l.Int("pid") == child && strings.Contains(l.Msg(), "previous generation exited before the handoff")
	})
	if got := s.waitReady(2); got != child {
		t.Fatalf("generation 2 ready as pid %d, want %d", got, child)
	}
	waitRequests(t, tl, total(tl)+500)
	stop()

	info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
	if info.PID != child {
		t.Errorf("after the old generation was killed pid %d serves, want the new one (%d)", info.PID, child)
	}
	if unix := syscall.Kill(child, 0); unix != nil {
		t.Errorf("the new generation (pid %d) is gone: %v", child, unix)
	}
	if _, err := notify.Await(10*time.Second, func(m notifyMsg) bool {
		return m.pid == child && m.fields["MAINPID"] == strconv.Itoa(child)
	}); err != nil {
		t.Fatalf("waiting for MAINPID from the new generation: %v; messages: %v", err, notify.All())
	}
	tl.mu.Lock()
	lost := append([]string(nil), tl.lost...)
	tl.mu.Unlock()
	s.checkLost(t, pid, lost)
	t.Logf("old generation killed in the new one's probation: %d requests, %d failed, all on connections the killed process held",
		total(tl), tl.failures())
	if tl.failures() != len(lost) {
		t.Errorf("%d failures but %d lost connections: a failure that is not on a killed connection: %v", tl.failures(), len(lost), tl.examples)
	}
}

// SIGTERM (or SIGINT) to the new generation in probation fails the
// upgrade, and the caller hears why; the old generation serves on, and
// the new one drains what it served.
func TestFaultStopNewGenerationInProbation(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			s := start(t, startOptions{args: []string{"-probation", "3s", "-upgrade-timeout", "20s"}})
			pid := s.waitReady(1)
			stop, tl := backgroundLoad(s.addr)
			waitRequests(t, tl, 200)

			s.install(v2)
			type ctlOut struct {
				stderr string
				status int
			}
			res := make(chan ctlOut, 1)
			go func() {
				_, e, st := s.ctl("upgrade")
				res <- ctlOut{e, st}
			}()
			child := s.logs.Wait(t, time.Minute, "probation", func(l testkit.LogLine) bool {
				return l.Msg() == "probation started" && l.Int("generation") == 2
			}).Int("pid")
			waitRequests(t, tl, total(tl)+200)
			s.signal(child, sig)
			out := <-res
			if st := s.waitExit(child, time.Minute); st == 0 {
				t.Errorf("the new generation stopped in probation exited 0; want a non-zero status, since it never took over")
			}
			waitRequests(t, tl, total(tl)+300)
			stop()
			t.Logf("%v in probation: %d requests, %d failed; ctl upgrade: status %d, %s", sig, total(tl), tl.failures(), out.status, strings.TrimSpace(out.stderr))
			if out.status != 1 || !strings.Contains(out.stderr, "stopped before it was ready") {
				t.Errorf("ctl upgrade: status %d, stderr %q; want 1 and \"stopped before it was ready\"", out.status, out.stderr)
			}
			if n := tl.failures(); n > 0 {
				t.Errorf("%d requests failed, want 0: %v", n, tl.examples)
			}
			info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
			if info.PID != pid {
				t.Errorf("pid %d serves, want the old generation (%d)", info.PID, pid)
			}
			s.upgrade(pid, 2)
		})
	}
}

// A stop signal to the old generation at the moment of the handoff is
// never lost: before the commit it calls the upgrade off and stops the
// service; after it, it is passed on to the new generation, as SIGHUP is.
// The service stops either way, with its in-flight requests answered.
func TestFaultStopOldGenerationAtHandoff(t *testing.T) {
	for _, tc := range []struct {
		name string
		// when says at which log line of the new generation to signal
		// the old one.
		when string
	}{
		{"in probation", "probation started"},
		{"as the new one is ready", "ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, startOptions{args: []string{"-probation", "1s", "-upgrade-timeout", "20s"}})
			pid := s.waitReady(1)
			slow := make(chan int, 1)
			go func() {
				resp, err := testkit.NewConnClient().Get(s.url("/slow?ms=3000"))
				if err != nil {
					slow <- -1
					return
				}
				resp.Body.Close()
				slow <- resp.StatusCode
			}()
			s.waitInFlight(1) // the slow request
			s.install(v2)
			s.signal(pid, syscall.SIGHUP)
			l := s.logs.Wait(t, time.Minute, tc.when, func(l testkit.LogLine) bool {
				return l.Msg() == tc.when && l.Int("generation") == 2
			})
			child := l.Int("pid")
			s.signal(pid, syscall.SIGTERM)
			if code := <-slow; code != 200 {
				t.Errorf("the request in flight at the stop got %d, want 200", code)
			}
			if st := s.waitExit(pid, time.Minute); st != 0 {
				t.Errorf("old generation exit status %d, want 0", st)
			}
			// The new generation may exit before its parent, which then
			// reaps it: its own last log line says how it ended.
			exit := s.logs.Wait(t, time.Minute, "the new generation's exit", func(l testkit.LogLine) bool {
				return l.Msg() == "exit" && l.Int("pid") == child
			})
			if tc.when == "ready" && !strings.Contains(exit.Str("reason"), "stop requested by the previous generation") {
				t.Errorf("the new generation took over; it exited with reason %q, want the stop passed on by the previous generation", exit.Str("reason"))
			}
			if tc.when != "ready" && !strings.Contains(exit.Str("reason"), "upgrade called off") {
				t.Errorf("the new generation in probation exited with reason %q, want the upgrade called off", exit.Str("reason"))
			}
			if c, err := testkit.NewConnClient().Get(s.url("/")); err == nil {
				c.Body.Close()
				t.Errorf("the service still answers after a stop signal at the handoff")
			}
		})
	}
}

// Only the serving generation answers on the control socket: during a
// probation, ctl reaches the old one, and the socket file stays.
func TestControlDuringProbation(t *testing.T) {
	s := start(t, startOptions{args: []string{"-probation", "3s", "-upgrade-timeout", "20s"}})
	pid := s.waitReady(1)
	s.install(v2)
	s.signal(pid, syscall.SIGHUP)
	child := s.logs.Wait(t, time.Minute, "probation", func(l testkit.LogLine) bool {
		return l.Msg() == "probation started" && l.Int("generation") == 2
	}).Int("pid")
	asked := 0
	passed := func() []testkit.LogLine {
		return s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "probation passed" && l.Int("pid") == child })
	}
	c, token := controlClient(s.dir), s.token()
	for passed() == nil {
		asked++
		t0 := time.Now()
		req, _ := http.NewRequest("GET", "http://control/status", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("control status during probation: %v", err)
		}
		var got struct {
			PID int `json:"pid"`
		}
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if got.PID == pid {
			continue
		}
		// The new generation may answer once it has taken over, which can
		// happen while this request was under way (a connection in the
		// socket's queue at that moment goes to either): not before.
		if p := passed(); p == nil || t0.Add(100*time.Millisecond).Before(logTime(t, p[0])) {
			t.Fatalf("a control request made during the probation of pid %d was answered by pid %d, want the serving one (%d)", child, got.PID, pid)
		}
	}
	s.waitReady(2)
	s.waitExit(pid, time.Minute)
	if _, err := os.Stat(filepath.Join(s.dir, "data", "control.sock")); err != nil {
		t.Fatalf("control socket after the upgrade: %v", err)
	}
	out, errOut, st := s.ctl("status", "-json")
	var got struct {
		PID int `json:"pid"`
	}
	json.Unmarshal([]byte(out), &got)
	if st != 0 || got.PID != child {
		t.Errorf("ctl status after the upgrade: status %d, pid %d (%s); want 0 and %d", st, got.PID, errOut, child)
	}
	t.Logf("%d ctl status calls during the probation, all answered by the serving generation", asked)
}

// A failed upgrade leaks no file descriptor.
func TestFailedUpgradesLeakNoFDs(t *testing.T) {
	s := start(t, startOptions{})
	pid := s.waitReady(1)
	count := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	s.installScript("echo bad build >&2; exit 3")
	// One failed upgrade first: whatever is set up once per process (the
	// stdin and stderr passed to every child) is then in place.
	if _, _, st := s.ctl("upgrade"); st != 1 {
		t.Fatalf("ctl upgrade of a bad build: status %d, want 1", st)
	}
	before := count()
	for i := range 20 {
		if _, e, st := s.ctl("upgrade"); st != 1 {
			t.Fatalf("failed upgrade %d: status %d, want 1: %s", i, st, e)
		}
	}
	// tableflip (v1.2.3) leaves its ends of a failed child's readiness
	// pipes to the garbage collector, which the server runs after a
	// failed upgrade: give the finalizers a moment. The check below says
	// whether they closed enough.
	after := count()
	testkit.Wait(5*time.Second, func() error {
		if after = count(); after > before+2 {
			return fmt.Errorf("%d fds open", after)
		}
		return nil
	})
	t.Logf("open fds of the serving generation: %d before 20 failed upgrades, %d after", before, after)
	if after > before+2 {
		t.Errorf("%d fds after 20 failed upgrades, %d before: a failed upgrade leaks", after, before)
	}
}

// Control requests are counted apart from the service's traffic: ctl
// status shows no request in flight while it is being answered.
func TestControlTrafficCountedApart(t *testing.T) {
	s := start(t, startOptions{})
	s.waitReady(1)
	out, errOut, st := s.ctl("status", "-json")
	if st != 0 {
		t.Fatalf("ctl status: %d: %s", st, errOut)
	}
	var got struct {
		InFlight int64 `json:"in_flight_requests"`
		Servers  []struct {
			Name     string `json:"name"`
			InFlight int64  `json:"in_flight"`
			Requests int64  `json:"requests"`
		} `json:"servers"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if got.InFlight != 0 {
		t.Errorf("ctl status says %d requests in flight on the service, want 0 (its own request is control traffic)", got.InFlight)
	}
	var control int64 = -1
	for _, sv := range got.Servers {
		if sv.Name == "control" {
			control = sv.InFlight
		}
	}
	if control != 1 {
		t.Errorf("control server in flight = %d, want 1 (the ctl status request itself): %s", control, out)
	}
}
