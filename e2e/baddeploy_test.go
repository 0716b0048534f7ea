package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// failedEvent is the message of the Warn event of a failed upgrade.
const failedEvent = "upgrade failed: old generation keeps serving"

// A bad deploy never takes the service down: for each way a new generation
// can fail, load runs during the attempt without a single failed request,
// the old generation serves on under the same generation number, a Warn
// event names the cause, and then a good upgrade succeeds.
func TestBadDeploys(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	conf := filepath.Join(dir, "handoff.toml")
	addr := testkit.FreeAddr(t)
	goodConf := fmt.Sprintf("# handoff e2e\naddr = %q\ndrain-timeout = \"10s\"\n", addr)
	os.WriteFile(conf, []byte(goodConf), 0o600)
	s := start(t, startOptions{dir: dir, addr: addr, addrInConfig: true,
		// Long enough for a good start-up on a loaded machine with -race
		// (it checks the database and warms the cache), short enough for
		// the hanging build's two attempts.
		args: []string{"-config", "handoff.toml", "-upgrade-timeout", "8s"}})
	busy, err := net.Listen("tcp", "127.0.0.1:0") // a port the new generation cannot have
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	cases := []struct {
		name    string
		deploy  func()
		cause   []string // what the Warn event's fields must say
		timeout bool
	}{{
		name:   "exits before ready",
		deploy: func() { s.installScript("echo 'fatal: open database: disk I/O error' >&2\nexit 3") },
		cause:  []string{"exit status 3", "disk I/O error"},
	}, {
		name:    "hangs, never ready",
		deploy:  func() { s.installScript("echo 'starting' >&2\nexec sleep 600") },
		cause:   []string{"not ready in time", "starting"},
		timeout: true,
	}, {
		name: "invalid config file",
		deploy: func() {
			os.WriteFile(conf, []byte(goodConf+"drian-timeout = \"5s\"\n"), 0o600)
		},
		cause: []string{"exit status 2", "line 4", "drian-timeout"},
	}, {
		name:   "binary missing",
		deploy: func() { os.Remove(s.bin) },
		cause:  []string{"binary", "no such file"},
	}, {
		name:   "binary not executable",
		deploy: func() { os.Chmod(s.bin, 0o644) },
		cause:  []string{"not executable", "chmod +x"},
	}, {
		name: "cannot bind its listener",
		deploy: func() {
			bad := strings.Replace(goodConf, addr, busy.Addr().String(), 1)
			os.WriteFile(conf, []byte(bad), 0o600)
		},
		cause: []string{"exit status 1", "address already in use"},
	}}

	gen := 1
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pid := s.waitReady(gen)
			tc.deploy()
			before := len(s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == failedEvent }))
			stop, tl := backgroundLoad(s.addr)
			// The load spans the attempt: 200 requests before it, 200 after.
			waitRequests(t, tl, 200)
			s.signal(pid, syscall.SIGHUP)
			ev := s.logs.Wait(t, time.Minute, "the upgrade to fail", func(l testkit.LogLine) bool {
				return l.Msg() == failedEvent && l.Int("pid") == pid
			})
			// The same through the control API: ctl upgrade fails and says why.
			out, errOut, st := s.ctl("upgrade")
			if st == 0 {
				t.Errorf("server ctl upgrade: exit status 0 (%s), want a failure", out)
			}
			for _, want := range tc.cause {
				if !strings.Contains(errOut, want) {
					t.Errorf("server ctl upgrade does not say %q: %s", want, errOut)
				}
			}
			waitRequests(t, tl, total(tl)+200)
			stop()
			if n := len(s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == failedEvent })); n != before+2 {
				t.Errorf("%d upgrade failures logged for two attempts", n-before)
			}
			if ev.Str("level") != "warn" {
				t.Errorf("failed upgrade logged at %q, want warn", ev.Str("level"))
			}
			for _, want := range tc.cause {
				if !strings.Contains(ev.Raw, want) {
					t.Errorf("failed upgrade event does not say %q: %s", want, ev.Raw)
				}
			}
			if tc.timeout && ev.Fields["timed_out"] != true {
				t.Errorf("failed upgrade event: timed_out = %v, want true", ev.Fields["timed_out"])
			}
			t.Logf("%s: %d requests during the attempts, %d failed; cause logged: %s; server ctl upgrade: %s",
				tc.name, total(tl), tl.failures(), ev.Str("error"), strings.TrimSpace(errOut))
			if tl.failures() != 0 {
				t.Errorf("%d requests failed during the bad upgrade, want 0: %v", tl.failures(), tl.examples)
			}
			info, _ := getRoot(t, testkit.NewConnClient(), s.url("/"))
			if info.Generation != gen || info.PID != pid {
				t.Errorf("after the failed upgrade generation %d pid %d serves, want %d %d", info.Generation, info.PID, gen, pid)
			}

			// Put things right; a good upgrade then succeeds.
			os.WriteFile(conf, []byte(goodConf), 0o600)
			s.install(v2)
			gen++
			s.upgrade(pid, gen)
		})
	}
}

// waitRequests waits until the load has sent n requests.
func waitRequests(t *testing.T, tl *tally, n int) {
	t.Helper()
	testkit.WaitFor(t, time.Minute, fmt.Sprintf("%d requests of load", n), func() error {
		if got := total(tl); got < n {
			return fmt.Errorf("%d so far", got)
		}
		return nil
	})
}

func total(t *tally) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.ok {
		n += c
	}
	for _, m := range t.failed {
		for _, c := range m {
			n += c
		}
	}
	return n
}
