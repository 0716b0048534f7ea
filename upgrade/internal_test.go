package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTailKeepsLastLines(t *testing.T) {
	var tl tail
	for i := range 30 {
		fmt.Fprintf(&tl, "line %d\n", i)
	}
	tl.Write([]byte("partial"))
	got := tl.lines()
	if len(got) != tailLines+1 || got[0] != "line 10" || got[tailLines-1] != "line 29" || got[tailLines] != "partial" {
		t.Errorf("tail = %q, want lines 10..29 and the partial line", got)
	}
	var long tail
	long.Write([]byte(strings.Repeat("x", 5000) + "\n"))
	if l := long.lines(); len(l) != 1 || len(l[0]) > tailLineMax+len("…") {
		t.Errorf("a 5000-byte line kept as %d lines, first %d bytes; want one line cut to %d", len(l), len(l[0]), tailLineMax)
	}
}

func TestParseChildError(t *testing.T) {
	tests := []struct {
		err      string
		pid      int
		exit     string
		timedOut bool
		msg      string
	}{
		{"child pid=123 exited: exit status 2", 123, "exit status 2", false, "exited before it was ready: exit status 2"},
		{"child pid=9 exited", 9, "exit status 0", false, "exit status 0"},
		{"child pid=9 exited: signal: segmentation fault", 9, "signal: segmentation fault", false, "segmentation fault"},
		{"new child pid=77 timed out", 77, "signal: killed", true, "not ready in time"},
		{"can't start child: fork/exec: exec format error", 0, "", false, "not started"},
	}
	for _, tt := range tests {
		e := parseChildError(errors.New(tt.err), []string{"first", "bad config: line 3"})
		if e.ChildPID != tt.pid || e.Exit != tt.exit || e.TimedOut != tt.timedOut {
			t.Errorf("parseChildError(%q) = pid %d exit %q timeout %v; want %d %q %v",
				tt.err, e.ChildPID, e.Exit, e.TimedOut, tt.pid, tt.exit, tt.timedOut)
		}
		if !strings.Contains(e.Error(), tt.msg) || !strings.Contains(e.Error(), "bad config: line 3") {
			t.Errorf("parseChildError(%q).Error() = %q, want it to contain %q and the last stderr line", tt.err, e.Error(), tt.msg)
		}
	}
}

func TestPIDFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.pid")
	if err := writePIDFile(path, 100); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(path, 200); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "200\n" {
		t.Errorf("pid file = %q, want 200", b)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d files after two writes, want only the pid file", len(entries))
	}
	removePIDFile(path, 100) // a predecessor's pid: not its file any more
	if _, err := os.Stat(path); err != nil {
		t.Errorf("pid file removed by a process it does not name: %v", err)
	}
	removePIDFile(path, 200)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("pid file still there after its process removed it: %v", err)
	}
}

func TestSpreadOffsetStaysInWindow(t *testing.T) {
	const spread = 1000
	seen := map[int64]bool{}
	for id := uint64(1); id <= 100; id++ {
		off := spreadOffset(id, spread)
		if off < 0 || off >= spread {
			t.Fatalf("spreadOffset(%d) = %d, outside [0, %d)", id, off, spread)
		}
		seen[int64(off)/100] = true
	}
	if len(seen) < 8 {
		t.Errorf("100 offsets fall in %d of 10 tenths of the window, want them spread", len(seen))
	}
}

// TestTableflipErrorText pins the tableflip version whose error texts
// tableflip.go reads. A new version must be checked against its child.go
// and upgrader.go before this test is changed.
func TestTableflipErrorText(t *testing.T) {
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/cloudflare/tableflip" {
			version = f[1]
		}
	}
	if version != "v1.2.3" {
		t.Fatalf("tableflip is %q; tableflip.go matches the error texts of v1.2.3: check them against the new version, then update this test", version)
	}
	// The texts as v1.2.3 writes them (upgrader.go doUpgrade, run).
	for _, tt := range []struct {
		err      string
		pid      int
		exit     string
		timedOut bool
	}{
		{fmt.Sprintf("child %s exited: %s", "pid=41", "exit status 3"), 41, "exit status 3", false},
		{fmt.Sprintf("child %s exited", "pid=42"), 42, "exit status 0", false},
		{fmt.Sprintf("new child %s timed out", "pid=43"), 43, "signal: killed", true},
	} {
		e := parseChildError(errors.New(tt.err), nil)
		if e.ChildPID != tt.pid || e.Exit != tt.exit || e.TimedOut != tt.timedOut {
			t.Errorf("parseChildError(%q) = pid %d, exit %q, timed out %v; want %d, %q, %v", tt.err, e.ChildPID, e.Exit, e.TimedOut, tt.pid, tt.exit, tt.timedOut)
		}
	}
	if tableflipParentAlive != "parent hasn't exited" {
		t.Errorf("tableflipParentAlive = %q, want v1.2.3's text", tableflipParentAlive)
	}
}

func TestSlogLogger(t *testing.T) {
	var b strings.Builder
	l := SlogLogger(slog.New(slog.NewJSONHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.Warn().Int("pid", 7).Str("component", "upgrade").Msg("upgrade failed")
	var got map[string]any
	if err := json.Unmarshal([]byte(b.String()), &got); err != nil {
		t.Fatalf("slog output %q: %v", b.String(), err)
	}
	if got["level"] != "WARN" || got["msg"] != "upgrade failed" || got["pid"] != float64(7) || got["component"] != "upgrade" {
		t.Errorf("slog record = %v, want level WARN, msg, pid 7 and component", got)
	}
}
