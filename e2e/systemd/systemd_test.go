package systemd_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// TestReloadsThenStop: five reloads under load, each to a new binary
// renamed into place first, then systemctl stop with a 2 s request in
// flight. Before supervisor mode, a stop after any reload was SIGTERM then
// SIGKILL 0.3 ms later (Result=signal): systemd does not wait for a main
// pid it did not start.
func TestReloadsThenStop(t *testing.T) {
	eachSuite(t, func(t *testing.T, rootfs string) {
		h := boot(t, rootfs, installOptions{})
		h.mustSystemctl("enable", "--now", "handoff.service")
		h.mustGet()

		l := h.startLoad()
		var last info
		for _, v := range []string{v2, v1, v2, v1, v2} {
			last = h.reload(v)
		}
		checkLoad(t, "5 reloads", l.stop())

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		slow := h.c.Command(ctx, "curl", "-sS", "--fail-with-body", "-m", "30", publicURL+"/slow?ms=2000")
		var out strings.Builder
		slow.Stdout = &out
		slow.Stderr = &out
		if err := slow.Start(); err != nil {
			t.Fatal(err)
		}
		h.waitRequestRead()
		began := time.Now()
		_, code := h.systemctl("stop", "handoff.service")
		stopTook := time.Since(began)
		err := slow.Wait()
		t.Logf("systemctl stop: exit status %d after %v; the 2 s request: %v %s", code, stopTook.Round(time.Millisecond), err, out.String())
		if code != 0 {
			t.Errorf("systemctl stop: exit status %d, want 0", code)
		}
		if err != nil || !strings.Contains(out.String(), `"slept_ms":2000`) {
			t.Errorf("the 2 s request in flight during systemctl stop: %v: %q, want its answer", err, out.String())
		}
		h.checkCleanStop(last.PID)
	})
}

// checkCleanStop checks that the service stopped gracefully: the serving
// generation (pid, inside) ran both cleanup hooks, the main process
// exited 0 and systemd calls the stop a success.
func (h *host) checkCleanStop(pid int) {
	h.t.Helper()
	props := h.show("handoff.service", "ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus")
	// ExecMainCode 1 is CLD_EXITED: the main process exited, no signal.
	want := map[string]string{"ActiveState": "inactive", "SubState": "dead", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
	for k, v := range want {
		if props[k] != v {
			h.t.Errorf("after systemctl stop: %s=%s, want %s (%v)", k, props[k], v, props)
		}
	}
	if st := h.status(); !strings.Contains(st, "inactive (dead)") {
		h.t.Errorf("systemctl status after stop does not say inactive (dead):\n%s", st)
	}
	journal := h.c.Journal("-b", "-u", "handoff.service", "-o", "cat")
	for _, hook := range []string{"persist cache", "close database"} {
		if !hasEvent(journal, pid, "cleanup done", "hook", hook) {
			h.t.Errorf("journal: no \"cleanup done\" for %q from the serving generation (pid %d)", hook, pid)
		}
	}
}

// hasEvent reports whether the journal (-o cat) has a JSON log event with
// message msg from pid (inside), and key=value.
func hasEvent(journal string, pid int, msg, key, value string) bool {
	for _, e := range events(journal) {
		if e.Msg() == msg && e.Int("pid") == pid && e.Str(key) == value {
			return true
		}
	}
	return false
}

// events returns the JSON log events among the journal's lines (-o cat).
func events(journal string) []testkit.LogLine {
	var out []testkit.LogLine
	for _, line := range strings.Split(journal, "\n") {
		if e, ok := testkit.ParseLogLine(line); ok {
			out = append(out, e)
		}
	}
	return out
}

// waitRequestRead waits until the server has accepted a connection on
// port 8080 and read the request on it: in /proc/net/tcp a connection
// still in the accept queue has no inode, and a request not yet read
// leaves bytes in the receive queue. The same connection must look so on
// two reads of the table in a row, the first of which could come between
// the accept and the request's arrival.
func (h *host) waitRequestRead() {
	h.t.Helper()
	var seen string
	testkit.WaitFor(h.t, 30*time.Second, "a request read by the server on 127.0.0.1:8080", func() error {
		table := h.c.Run("cat", "/proc/net/tcp")
		read := ""
		for _, line := range strings.Split(table, "\n")[1:] {
			f := strings.Fields(line)
			// sl local remote st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[1] != "0100007F:1F90" || f[3] != "01" {
				continue
			}
			if _, rx, _ := strings.Cut(f[4], ":"); strings.Trim(rx, "0") == "" && f[9] != "0" {
				read = f[9]
			}
		}
		if read != "" && read == seen {
			return nil
		}
		seen = read
		return fmt.Errorf("no accepted connection with its request read, twice in a row; /proc/net/tcp:\n%s", table)
	})
}

// TestBadReloads: a reload to a binary that exits 3, and to one that is
// never ready, must fail systemctl reload with the cause in the journal
// and in systemctl status, while the old generation serves on under load;
// a good reload after them works. Before, Type=notify-reload ended a
// failed reload with READY=1, and systemctl reload returned 0.
func TestBadReloads(t *testing.T) {
	eachSuite(t, func(t *testing.T, rootfs string) {
		// A short -upgrade-timeout, so that the hanging binary fails fast.
		h := boot(t, rootfs, installOptions{dropIn: "[Service]\nEnvironment=HANDOFF_UPGRADE_TIMEOUT=5s\n"})
		h.mustSystemctl("enable", "--now", "handoff.service")
		good := h.mustGet()
		pid := h.mainPID()
		l := h.startLoad()
		for _, bad := range []struct {
			name, script string
			cause        *regexp.Regexp // in the journal and systemctl status
		}{
			// The server's words, not systemd's: ExecReload= once ran the
			// broken binary itself as ctl, which exited 3 before asking
			// for any upgrade ("Control process exited, status=3"), and
			// hung on the hanging one until TimeoutStartSec.
			{"exits 3", "exit 3", regexp.MustCompile(`new generation .*exit status 3`)},
			{"never ready", "exec sleep 600", regexp.MustCompile(`new generation .*not ready in time`)},
		} {
			h.installScript(bad.script)
			began := time.Now()
			out, code := h.systemctl("reload", "handoff.service")
			t.Logf("systemctl reload to a binary that %s: exit status %d after %v: %s", bad.name, code,
				time.Since(began).Round(time.Millisecond), strings.TrimSpace(out))
			if code == 0 {
				t.Errorf("systemctl reload to a binary that %s: exit status 0, want non-zero", bad.name)
			}
			st := h.status()
			t.Logf("systemctl status after it:\n%s", st)
			if !bad.cause.MatchString(st) {
				t.Errorf("systemctl status after a reload to a binary that %s does not name the cause (%s):\n%s", bad.name, bad.cause, st)
			}
			if j := h.c.Journal("-b", "-u", "handoff.service"); !bad.cause.MatchString(j) {
				t.Errorf("the journal after a reload to a binary that %s does not name the cause (%s):\n%s", bad.name, bad.cause, tailLines(j, 30))
			}
			if now, err := h.get(); err != nil || now != good {
				t.Errorf("after the reload to a binary that %s: GET / = %+v, %v; want the old generation %+v", bad.name, now, err, good)
			}
			if p := h.show("handoff.service", "ActiveState", "MainPID"); p["ActiveState"] != "active" || p["MainPID"] != strconv.Itoa(pid) {
				t.Errorf("after the reload to a binary that %s: %v, want active with MainPID %d", bad.name, p, pid)
			}
		}
		h.reload(v2)
		checkLoad(t, "2 failed reloads and a good one", l.stop())
	})
}

// TestSocketActivationAndRestart: with handoff.socket, the first
// connection starts the service, reloads keep systemd's socket, and a
// restart under load refuses and fails nothing: connections wait in the
// socket's queue while the old service drains and the new one starts.
func TestSocketActivationAndRestart(t *testing.T) {
	eachSuite(t, func(t *testing.T, rootfs string) {
		h := boot(t, rootfs, installOptions{socket: true})
		h.mustSystemctl("enable", "--now", "handoff.socket")
		if st := h.show("handoff.service", "ActiveState")["ActiveState"]; st != "inactive" {
			t.Fatalf("with only handoff.socket started, handoff.service is %s, want inactive", st)
		}
		sock := h.listeningSocket()
		first := h.mustGet()
		if st := h.show("handoff.service", "ActiveState")["ActiveState"]; st != "active" {
			t.Fatalf("after the first connection, handoff.service is %s, want active", st)
		}
		t.Logf("the first connection started the service: %+v", first)

		l := h.startLoad()
		h.reload(v2)
		h.reload(v1)
		if got := h.listeningSocket(); got != sock {
			t.Errorf("after 2 reloads, the listening socket is inode %s, want systemd's %s", got, sock)
		}
		before := h.mainPID()
		began := time.Now()
		h.mustSystemctl("restart", "handoff.service")
		t.Logf("systemctl restart under load took %v", time.Since(began).Round(time.Millisecond))
		if after := h.mainPID(); after == before || after == 0 {
			t.Errorf("after systemctl restart: MainPID %d, want a new one (was %d)", after, before)
		}
		// Traffic goes on to the new service a while before the count.
		for range 20 {
			if i := h.mustGet(); i.Version != v1 {
				t.Errorf("after restart: GET / = %+v, want version %s", i, v1)
			}
		}
		checkLoad(t, "2 reloads and a restart with handoff.socket", l.stop())
		if got := h.listeningSocket(); got != sock {
			t.Errorf("after the restart, the listening socket is inode %s, want systemd's %s", got, sock)
		}
	})
}

// listeningSocket returns the inode of the one socket listening on
// 127.0.0.1:8080 inside.
func (h *host) listeningSocket() string {
	h.t.Helper()
	var inodes []string
	table := h.c.Run("cat", "/proc/net/tcp")
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 10 && f[1] == "0100007F:1F90" && f[3] == "0A" {
			inodes = append(inodes, f[9])
		}
	}
	if len(inodes) != 1 {
		h.t.Fatalf("sockets listening on 127.0.0.1:8080: inodes %v, want exactly one\n%s", inodes, table)
	}
	return inodes[0]
}
