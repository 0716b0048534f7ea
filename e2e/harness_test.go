package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"golang.org/x/sys/unix"
)

// binDir holds the server binaries TestMain builds, one per version.
var binDir string

// The versions TestMain builds; a test upgrades from one to the other.
// vFaults is built with the handoff_faults tag (see cmd/server/faults_on.go).
const (
	v1      = "v1.0.0-e2e"
	v2      = "v2.0.0-e2e"
	vFaults = "v3.0.0-faults"
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	// Every generation after the first is orphaned when its parent exits.
	// As a subreaper this process inherits them, so a test can wait for
	// each one by pid and see its exit status.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: become subreaper:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "handoff-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	for _, v := range []string{v1, v2, vFaults} {
		if err := build(v, filepath.Join(dir, "server-"+v)); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	}
	return m.Run()
}

// build compiles ./cmd/server with version v, with -race when this suite
// runs with -race. E2E_BUILD_TAGS adds build tags to every version, to run
// the suite against a variant (handoff_h2onestep: HTTP/2 connections end
// with net/http's single GOAWAY).
func build(v, out string) error {
	args := []string{"build", "-o", out, "-ldflags", "-X main.version=" + v}
	var tags []string
	if v == vFaults {
		tags = append(tags, "handoff_faults")
	}
	if extra := os.Getenv("E2E_BUILD_TAGS"); extra != "" {
		tags = append(tags, extra)
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/server")...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build server %s: %w", v, err)
	}
	return nil
}

// binary returns the path of the built server of version v.
func binary(v string) string { return filepath.Join(binDir, "server-"+v) }

// server is one running service: the first process the test started and
// every generation that followed it, all found through their logs.
type server struct {
	t    testing.TB
	dir  string // working directory; the binary is dir/server
	bin  string
	addr string
	logs *testkit.LogBook
	cmd  *exec.Cmd

	mu    sync.Mutex
	procs map[int]*proc
}

// proc is one generation's process.
type proc struct {
	pid    int
	exited chan struct{}
	status int // exit status; -1 when killed by a signal or reaped by another
}

type startOptions struct {
	version string   // binary version; v1 when empty
	args    []string // more flags
	env     []string // more environment
	dir     string   // working directory; a new temporary one when empty
	addr    string   // public address; a free loopback port when empty
	noWait  bool     // do not wait for the first generation's ready event
	// addrInConfig leaves -addr off the command line: the test's config
	// file sets addr (flags would override it).
	addrInConfig bool
	// extraFiles are passed from fd 3 on, and LISTEN_PID is set to the
	// server's pid, as systemd does for socket activation.
	extraFiles []*os.File
	// supervise runs the server with -supervise: the first process is the
	// supervisor, and the generations are its children, which it reaps
	// (wait for them through its "generation exited" events).
	supervise bool
	// binPath installs this binary instead of a version of the server, and
	// passes it only -addr and args: the tableflip baseline of the
	// restart benchmarks (scripts/baseline).
	binPath string
	// prefix runs the server under another command, such as unshare. The
	// pids in the logs are then those of another PID namespace: no
	// generation is tracked by pid, only the prefix's process.
	prefix []string
}

// start runs the server binary and waits until generation 1 is ready.
func start(t testing.TB, o startOptions) *server {
	t.Helper()
	if o.version == "" {
		o.version = v1
	}
	if o.dir == "" {
		o.dir = testkit.ShortTempDir(t)
	}
	if o.addr == "" {
		o.addr = testkit.FreeAddr(t)
	}
	s := &server{t: t, dir: o.dir, bin: filepath.Join(o.dir, "server"), addr: o.addr, procs: map[int]*proc{}}
	if o.binPath != "" {
		installBinary(t, o.binPath, s.bin)
	} else {
		s.install(o.version)
	}

	// The test owns the pipe every generation writes its logs to; exec's
	// copying goroutine would tie Wait to the last generation's exit.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	discover := s.discover
	if len(o.prefix) > 0 {
		discover = func(int) {}
	}
	s.logs = testkit.ReadLog(r, func(l testkit.LogLine) {
		if pid := l.Int("pid"); pid > 0 {
			discover(pid)
		}
	})
	args := []string{"-log-format", "json", "-log-level", "info"}
	if o.binPath != "" {
		args = nil
	}
	if o.supervise {
		args = append(args, "-supervise")
	}
	if !o.addrInConfig {
		args = append(args, "-addr", o.addr)
	}
	args = append(args, o.args...)
	cmd := exec.Command("./server", args...)
	if len(o.prefix) > 0 {
		cmd = exec.Command(o.prefix[0], append(append(o.prefix[1:len(o.prefix):len(o.prefix)], "./server"), args...)...)
	}
	if len(o.extraFiles) > 0 {
		// The shell's pid becomes the server's with exec: LISTEN_PID must
		// name the process that receives the sockets.
		cmd = exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec ./server "$@"`, "sh"}, args...)...)
		cmd.ExtraFiles = o.extraFiles
	}
	cmd.Dir = o.dir
	cmd.Env = append(baseEnv(), o.env...)
	cmd.Stdout = w
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s.cmd = cmd
	first := &proc{pid: cmd.Process.Pid, exited: make(chan struct{})}
	s.mu.Lock()
	s.procs[first.pid] = first
	s.mu.Unlock()
	go func() { // ends when the first process exits
		err := cmd.Wait()
		first.status = exitStatus(cmd.ProcessState, err)
		close(first.exited)
	}()
	t.Cleanup(s.kill)
	if !o.noWait {
		s.waitReady(1)
	}
	return s
}

// baseEnv is the test's environment without variables that would change
// how the server starts (a test of those sets them itself).
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HANDOFF_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") ||
			strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, "TABLEFLIP_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// install puts the binary of version v at s.bin atomically, the way a
// deploy must: write beside it, then rename over it.
func (s *server) install(v string) {
	s.t.Helper()
	installBinary(s.t, binary(v), s.bin)
}

func installBinary(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	installFile(t, dst, b)
}

// installScript installs a shell script as the server binary: a bad
// deploy that the test controls.
func (s *server) installScript(script string) {
	s.t.Helper()
	installFile(s.t, s.bin, []byte("#!/bin/sh\n"+script+"\n"))
}

func installFile(t testing.TB, dst string, b []byte) {
	t.Helper()
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// discover learns of a generation from its first log line, and starts
// waiting for its exit: it becomes this process's child when its parent
// exits, thanks to the subreaper.
func (s *server) discover(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.procs[pid]; ok {
		return
	}
	p := &proc{pid: pid, exited: make(chan struct{})}
	s.procs[pid] = p
	go func() { // ends when the process is gone, or after 10 minutes
		defer close(p.exited)
		testkit.Wait(10*time.Minute, func() error {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, 0, nil)
			switch {
			case err == nil:
				p.status = -1
				if ws.Exited() {
					p.status = ws.ExitStatus()
				}
				return nil
			case errors.Is(err, unix.EINTR):
				return err
			case errors.Is(err, unix.ECHILD):
				// Not ours yet (its parent lives) or already reaped by
				// its parent (a child that failed to start).
				if unix.Kill(pid, 0) == unix.ESRCH {
					p.status = -1
					return nil
				}
				return err
			default:
				p.status = -1
				return nil
			}
		})
	}()
}

func exitStatus(ps *os.ProcessState, err error) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1
	}
	return ps.ExitCode()
}

// kill ends every generation still running, by pid, and shows the logs
// of a failed test.
func (s *server) kill() {
	s.mu.Lock()
	procs := make([]*proc, 0, len(s.procs))
	for _, p := range s.procs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.exited:
		default:
			unix.Kill(p.pid, unix.SIGKILL)
		}
	}
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
		}
	}
	if s.t.Failed() {
		lines := s.logs.All()
		if len(lines) > 400 {
			lines = lines[len(lines)-400:]
		}
		for _, l := range lines {
			s.t.Log(l.Raw)
		}
	}
}

// proc returns the process with pid, which must have logged.
func (s *server) proc(pid int) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[pid]
}

// waitReady waits for generation gen's "ready" event and returns its pid.
func (s *server) waitReady(gen int) int {
	s.t.Helper()
	l := s.logs.Wait(s.t, 2*time.Minute, fmt.Sprintf("generation %d ready", gen), func(l testkit.LogLine) bool {
		return l.Msg() == "ready" && l.Int("generation") == gen
	})
	return l.Int("pid")
}

// waitExit waits for the process pid to exit and returns its status.
func (s *server) waitExit(pid int, timeout time.Duration) int {
	s.t.Helper()
	p := s.proc(pid)
	if p == nil {
		s.t.Fatalf("pid %d: not a process of this server", pid)
	}
	select {
	case <-p.exited:
		return p.status
	case <-time.After(timeout):
		s.t.Fatalf("pid %d did not exit within %v", pid, timeout)
		return 0
	}
}

func (s *server) signal(pid int, sig syscall.Signal) {
	s.t.Helper()
	if err := unix.Kill(pid, sig); err != nil {
		s.t.Fatalf("signal %v to pid %d: %v", sig, pid, err)
	}
}

// upgrade sends SIGHUP to pid and waits for generation gen to be ready and
// pid to exit with status 0. It returns the new pid.
func (s *server) upgrade(pid, gen int) int {
	s.t.Helper()
	s.signal(pid, syscall.SIGHUP)
	next := s.waitReady(gen)
	if st := s.waitExit(pid, time.Minute); st != 0 {
		s.t.Fatalf("generation %d (pid %d) exit status after handoff = %d, want 0", gen-1, pid, st)
	}
	return next
}

func (s *server) url(path string) string { return "http://" + s.addr + path }

// shortTempDir and freeAddr are testkit's, under the names the
// benchmarks of bench_test.go use.
var (
	shortTempDir = testkit.ShortTempDir
	freeAddr     = testkit.FreeAddr
)

// cpus is how many processes can run at once; loads scale with it.
var cpus = runtime.NumCPU()
