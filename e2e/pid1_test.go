package e2e

import (
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

// As PID 1 of its PID namespace (a container), a server's exit would kill
// every process in the namespace, the new generation included. SIGHUP
// there logs a Warn that says hot restart is disabled and what to do
// instead, and nothing else happens.
func TestPID1RefusesHotRestart(t *testing.T) {
	if out, err := exec.Command("unshare", "--pid", "--fork", "true").CombinedOutput(); err != nil {
		t.Skipf("unshare --pid --fork does not work here (%v: %s); run as root on Linux to test PID 1", err, strings.TrimSpace(string(out)))
	}
	dir := testkit.ShortTempDir(t)
	installBinary(t, binary(v1), filepath.Join(dir, "server"))
	addr := testkit.FreeAddr(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := testkit.ReadLog(r, nil)
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "./server", "-addr", addr, "-log-format", "json")
	cmd.Dir = dir
	cmd.Env = baseEnv()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() // --kill-child takes the server with it
		<-exited
		if t.Failed() {
			for _, l := range logs.All() {
				t.Log(l.Raw)
			}
		}
	})

	ready := logs.Wait(t, time.Minute, "ready", func(l testkit.LogLine) bool { return l.Msg() == "ready" })
	if ready.Int("pid") != 1 {
		t.Fatalf("server pid inside the namespace = %d, want 1", ready.Int("pid"))
	}
	server := childOf(t, cmd.Process.Pid) // the server's pid as this test sees it

	syscall.Kill(server, syscall.SIGHUP)
	warn := logs.Wait(t, time.Minute, "the refusal", func(l testkit.LogLine) bool { return l.Msg() == "upgrade request ignored" })
	if warn.Str("level") != "warn" || !strings.Contains(warn.Str("error"), "hot restart is disabled") ||
		!strings.Contains(warn.Str("error"), "roll the container") {
		t.Errorf("SIGHUP as PID 1 logged %s; want a Warn saying hot restart is disabled and to roll the container", warn.Raw)
	}
	if n := len(logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "upgrade started" })); n != 0 {
		t.Errorf("%d upgrades started as PID 1, want none", n)
	}
	info, _ := getRoot(t, &http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/")
	if info.PID != 1 || info.Generation != 1 {
		t.Errorf("after SIGHUP: pid %d generation %d serves, want 1 and 1", info.PID, info.Generation)
	}

	syscall.Kill(server, syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("server as PID 1 after SIGTERM: %v, want exit status 0", waitErr)
		}
	case <-time.After(time.Minute):
		t.Fatal("server as PID 1 did not exit within a minute of SIGTERM")
	}
}

// childOf returns the only child of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	var child int
	testkit.WaitFor(t, 10*time.Second, "the child of unshare", func() error {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
		if err != nil {
			return err
		}
		f := strings.Fields(string(b))
		if len(f) != 1 {
			return os.ErrNotExist
		}
		child, err = strconv.Atoi(f[0])
		return err
	})
	return child
}
