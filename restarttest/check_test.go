package restarttest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/restarttest"
)

// running reports whether pid names a live process (not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// pids collects the server pids the restarts saw.
type pids struct {
	mu  sync.Mutex
	all map[int]bool
}

func (p *pids) add(ps ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.all == nil {
		p.all = map[int]bool{}
	}
	for _, pid := range ps {
		p.all[pid] = true
	}
}

// checkGone fails the test for every pid still running.
func (p *pids) checkGone(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.all) == 0 {
		t.Fatal("no server pid was seen")
	}
	for pid := range p.all {
		if running(pid) {
			t.Errorf("server process %d still running after Check returned", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// hup is a Restart that sends SIGHUP to the serving generation.
func hup(seen *pids) func(context.Context, restarttest.RestartInfo) error {
	return func(_ context.Context, r restarttest.RestartInfo) error {
		seen.add(r.ServerPID)
		seen.add(r.PIDs...)
		if r.NewestPID == 0 {
			return errors.New("no serving process")
		}
		return syscall.Kill(r.NewestPID, syscall.SIGHUP)
	}
}

func helperConfig(t *testing.T, kind string) restarttest.Config {
	addr := testkit.FreeAddr(t)
	return restarttest.Config{
		Command:  []string{os.Args[0]},
		Env:      []string{helperEnv + "=" + kind, "RESTARTTEST_HELPER_ADDR=" + addr, genEnv + "="},
		Output:   testkit.LogWriter(t),
		URL:      "http://" + addr + "/",
		Restarts: 3,
		Interval: 400 * time.Millisecond,
		// A SIGHUP that reached a new generation before it set up its
		// handler would kill it: wait for each handoff.
		WaitGeneration: true,
		Clients:        12,
		Logf:           t.Logf,
	}
}

// A server that drains with a plain http.Server.Shutdown loses requests on
// kept-alive connections at each restart; the kit must see them, classify
// them, and still count every generation by its header.
func TestCheckSeesLossOfPlainShutdown(t *testing.T) {
	var seen pids
	c := helperConfig(t, "http")
	c.Restart = hup(&seen)
	c.Modes = []restarttest.Mode{restarttest.KeepAlive, restarttest.NewConn, restarttest.H2C}
	c.PostPath = "/echo"
	c.GenHeader = "X-Generation"
	rep, err := restarttest.Check(t.Context(), c)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	t.Logf("report:\n%s", rep.Summary())
	seen.checkGone(t)
	if rep.OK() {
		t.Errorf("OK() = true for a server that drops kept-alive connections, want false")
	}
	ka := rep.ByMode[restarttest.KeepAlive]
	if ka == nil || ka[restarttest.EOF]+ka[restarttest.Reset] == 0 {
		t.Errorf("keep-alive clients: outcomes %v, want EOF or reset failures", ka)
	}
	if rep.Failed != rep.Outcomes.Failed() || rep.Failed == 0 {
		t.Errorf("Failed = %d, outcomes say %d", rep.Failed, rep.Outcomes.Failed())
	}
	for _, m := range c.Modes {
		if rep.ByMode[m] == nil || rep.ByMode[m][restarttest.OK] == 0 {
			t.Errorf("mode %s: no request answered OK", m)
		}
	}
	if rep.Restarts != 3 || rep.Generations != 4 {
		t.Errorf("restarts = %d, generations = %d; want 3 and 4", rep.Restarts, rep.Generations)
	}
	if len(rep.Examples) == 0 {
		t.Error("no failure quoted in Examples")
	}
	if want := fmt.Sprintf("requests=%d failed=%d restarts=3 generations=4", rep.Requests, rep.Failed); rep.Line() != want {
		t.Errorf("Line() = %q, want %q", rep.Line(), want)
	}
	// Every request is in the timeline, in order of start, with a
	// generation for every OK answer.
	if len(rep.Timeline) != rep.Requests {
		t.Errorf("timeline has %d requests, report %d", len(rep.Timeline), rep.Requests)
	}
	for i, q := range rep.Timeline {
		if i > 0 && q.Start < rep.Timeline[i-1].Start {
			t.Fatalf("timeline out of order at %d", i)
		}
		if q.Outcome == restarttest.OK && q.Gen == "" {
			t.Fatalf("request %d answered OK with no generation", i)
		}
	}
	var svg bytes.Buffer
	if err := rep.WriteSVG(&svg); err != nil || !bytes.Contains(svg.Bytes(), []byte("</svg>")) {
		t.Errorf("WriteSVG: %v, %d bytes", err, svg.Len())
	}
}

// grpc-go's GracefulStop sends the two-step GOAWAY, so a hot restart of a
// gRPC server loses no health check; generations come from header metadata.
func TestCheckGRPC(t *testing.T) {
	var seen pids
	c := helperConfig(t, "grpc")
	c.Restart = hup(&seen)
	c.Modes = []restarttest.Mode{restarttest.GRPC}
	c.GenHeader = "X-Generation"
	rep, err := restarttest.Check(t.Context(), c)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	t.Logf("report:\n%s", rep.Summary())
	seen.checkGone(t)
	if !rep.OK() {
		t.Errorf("gRPC health checks across hot restarts: %s", rep.Line())
	}
	if rep.Generations != 4 {
		t.Errorf("generations = %d, want 4", rep.Generations)
	}
}

// Without a header, generations are the processes that held the listening
// socket; a restart command in the shell gets their pids.
func TestCheckCountsProcesses(t *testing.T) {
	c := helperConfig(t, "http")
	dir := t.TempDir()
	c.RestartShell = `echo "$SERVER_PID $SERVER_PGID $SERVER_NEWEST_PID $RESTART_INDEX [$SERVER_PIDS]" >> restarts.log; kill -HUP $SERVER_NEWEST_PID`
	c.Dir = dir
	c.Restarts = 2
	rep, err := restarttest.Check(t.Context(), c)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	t.Logf("report:\n%s", rep.Summary())
	if rep.Generations != 3 {
		t.Errorf("generations = %d, want 3 (%v)", rep.Generations, rep.GenLog)
	}
	b, err := os.ReadFile(filepath.Join(dir, "restarts.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 {
		t.Fatalf("restart command ran %d times, want 2:\n%s", len(lines), b)
	}
	var seen pids
	for i, l := range lines {
		var first, pgid, newest, index int
		if _, err := fmt.Sscanf(l, "%d %d %d %d", &first, &pgid, &newest, &index); err != nil {
			t.Fatalf("restart env line %q: %v", l, err)
		}
		if first != pgid || index != i+1 || newest == 0 || !strings.Contains(l, "["+strconv.Itoa(newest)+"]") {
			t.Errorf("restart %d env: %q, want SERVER_PID = SERVER_PGID, RESTART_INDEX %d, SERVER_PIDS ending in SERVER_NEWEST_PID", i+1, l, i+1)
		}
		seen.add(first, newest)
		if rep.GenLog[i].PID != newest {
			t.Errorf("restart %d signalled pid %d, generation %d was pid %d", i+1, newest, i+1, rep.GenLog[i].PID)
		}
	}
	seen.checkGone(t)
}

// A server that exits at once is an error that says so, soon.
func TestCheckServerExits(t *testing.T) {
	_, err := restarttest.Check(t.Context(), restarttest.Config{
		Shell: "echo no config >&2; exit 3",
		URL:   "http://" + testkit.FreeAddr(t) + "/",
	})
	if err == nil || !strings.Contains(err.Error(), "exited before it answered") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Check of a server that exits 3: err = %v, want it to say it exited with status 3 before answering", err)
	}
}

// A server that never answers: the error says so, and nothing of it is
// left running.
func TestCheckNeverAnswers(t *testing.T) {
	dir := t.TempDir()
	// Accepts nothing: nothing listens on the port. The shell's child
	// sleeps too, to show descendants are stopped.
	_, err := restarttest.Check(t.Context(), restarttest.Config{
		Shell:        "sleep 300 & echo $! > child.pid; echo $$ > server.pid; wait",
		Dir:          dir,
		URL:          "http://" + testkit.FreeAddr(t) + "/",
		ReadyTimeout: 500 * time.Millisecond,
	})
	if err == nil || !strings.Contains(err.Error(), "did not answer") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("Check: err = %v, want it to say the server did not answer (refused)", err)
	}
	var seen pids
	for _, f := range []string{"server.pid", "child.pid"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		seen.add(pid)
	}
	seen.checkGone(t)
}

func TestValidate(t *testing.T) {
	ok := restarttest.Config{Shell: "./server", URL: "http://127.0.0.1:8080/"}
	for _, tc := range []struct {
		name  string
		edit  func(c *restarttest.Config)
		field string
	}{
		{"remote host", func(c *restarttest.Config) { c.URL = "http://10.1.2.3:8080/" }, "URL"},
		{"remote name", func(c *restarttest.Config) { c.URL = "http://example.com:80/" }, "URL"},
		{"no port", func(c *restarttest.Config) { c.URL = "http://127.0.0.1/" }, "URL"},
		{"ftp", func(c *restarttest.Config) { c.URL = "ftp://127.0.0.1:21/" }, "URL"},
		{"both commands", func(c *restarttest.Config) { c.Command = []string{"x"} }, "Shell"},
		{"restarts without how", func(c *restarttest.Config) { c.Restarts = 2 }, "RestartShell"},
		{"negative interval", func(c *restarttest.Config) { c.Interval = -time.Second }, "Interval"},
		{"h2 on http", func(c *restarttest.Config) { c.Modes = []restarttest.Mode{restarttest.H2} }, "Modes"},
		{"h2c on https", func(c *restarttest.Config) {
			c.URL = "https://127.0.0.1:8443/"
			c.Modes = []restarttest.Mode{restarttest.H2C}
		}, "Modes"},
		{"unknown mode", func(c *restarttest.Config) { c.Modes = []restarttest.Mode{"h3"} }, "Modes"},
		{"post path not a path", func(c *restarttest.Config) { c.PostPath = "echo" }, "PostPath"},
		{"post share", func(c *restarttest.Config) { c.PostShare = 1.5 }, "PostShare"},
		{"bad header", func(c *restarttest.Config) { c.GenHeader = "X Gen" }, "GenHeader"},
		{"no server, no header", func(c *restarttest.Config) { c.Shell = "" }, "GenHeader"},
		{"all slow", func(c *restarttest.Config) { c.SlowPath = "/slow"; c.Clients = 2; c.SlowClients = 2 }, "SlowClients"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := restarttest.Validate(c)
			var ce *restarttest.ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Errorf("Validate: %v, want a ConfigError on %s", err, tc.field)
			}
		})
	}
	if err := restarttest.Validate(ok); err != nil {
		t.Errorf("Validate(%+v) = %v, want nil", ok, err)
	}
	local := ok
	local.URL = "http://localhost:8080/x"
	if err := restarttest.Validate(local); err != nil {
		t.Errorf("Validate of a localhost URL: %v, want nil", err)
	}
}

// A server the caller runs (no Command) that resets every connection:
// the wait for its first answer ends with an error that names resets.
func TestCheckClassifiesResets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // ends when ln is closed
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.ReadAtLeast(c, make([]byte, 1), 1) // the request has arrived
				c.(*net.TCPConn).SetLinger(0)
				c.Close() // RST
			}()
		}
	}()
	_, err = restarttest.Check(t.Context(), restarttest.Config{
		URL:          "http://" + ln.Addr().String() + "/",
		GenHeader:    "X-Generation",
		ReadyTimeout: 300 * time.Millisecond,
	})
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("Check against a server that resets: %v, want an error naming reset", err)
	}
}
