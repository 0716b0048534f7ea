package restarttest_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/restarttest"
)

// fakeTB records what Run reports instead of failing the test.
type fakeTB struct {
	testing.TB
	errors, fatals, logs []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Log(args ...any) { f.logs = append(f.logs, fmt.Sprint(args...)) }

func TestRun(t *testing.T) {
	t.Run("passes", func(t *testing.T) {
		var seen pids
		c := helperConfig(t, "grpc")
		c.Restart = hup(&seen)
		c.Restarts = 1
		c.Modes = []restarttest.Mode{restarttest.GRPC}
		c.GenHeader = "X-Generation"
		f := &fakeTB{TB: t}
		rep := restarttest.Run(f, c)
		if len(f.errors)+len(f.fatals) > 0 || !rep.OK() {
			t.Errorf("Run of a passing check: errors %q, fatals %q", f.errors, f.fatals)
		}
		if !strings.Contains(strings.Join(f.logs, "\n"), rep.Line()) {
			t.Errorf("Run did not log the summary; logs: %q", f.logs)
		}
	})
	t.Run("never answers", func(t *testing.T) {
		f := &fakeTB{TB: t}
		restarttest.Run(f, restarttest.Config{Shell: "exec sleep 60", URL: "http://" + testkit.FreeAddr(t) + "/", ReadyTimeout: 300 * time.Millisecond})
		if len(f.fatals) != 1 || !strings.Contains(f.fatals[0], "did not answer") {
			t.Errorf("Run of a server that never answers: fatals %q, want one that says it did not answer", f.fatals)
		}
	})
}
