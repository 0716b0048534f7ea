package upgrade_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// tableflip allows one Upgrader per process, so tests of the real handoff
// run this test binary again as a small server (helperMain). Every
// generation it starts inherits the environment, and so is a helper too.
func TestMain(m *testing.M) {
	if os.Getenv("HANDOFF_TEST_HELPER") == "1" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// helperMain is a service adopted the way the package doc says. The file
// named by HANDOFF_TEST_FAIL, when it exists, makes a new generation fail
// before it is ready.
func helperMain() int {
	log := zerolog.New(os.Stderr).With().Timestamp().Logger()
	u, err := upgrade.New(upgrade.Options{Logger: log, Version: "helper", UpgradeTimeout: 20 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := u.Listen(context.Background(), "tcp", os.Getenv("HANDOFF_TEST_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gen := u.Generation()
	u.Serve(ln, upgrade.HTTP(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d", gen, os.Getpid())
	})}), nil)
	u.OnCleanup("mark", func(context.Context) error {
		f, err := os.OpenFile(os.Getenv("HANDOFF_TEST_MARKS"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintf(f, "cleanup %d\n", os.Getpid())
		return err
	})
	if _, err := os.Stat(os.Getenv("HANDOFF_TEST_FAIL")); err == nil && u.HasParent() {
		fmt.Fprintln(os.Stderr, "helper: refusing to start: fail file present")
		return 3
	}
	if err := u.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := u.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func msgIs(msg string, gen int) func(testkit.LogLine) bool {
	return func(l testkit.LogLine) bool { return l.Msg() == msg && l.Int("generation") == gen }
}

// The real handoff: a new generation that fails before ready leaves the old
// one serving and is reported with its exit status and stderr; a good one
// inherits the socket, and the old one drains, runs its cleanup and exits 0.
func TestHandoffWithTableflip(t *testing.T) {
	dir := t.TempDir()
	addr := testkit.FreeAddr(t)
	failFile := filepath.Join(dir, "fail")
	marks := filepath.Join(dir, "marks")

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_HELPER=1", "HANDOFF_TEST_ADDR="+addr,
		"HANDOFF_TEST_FAIL="+failFile, "HANDOFF_TEST_MARKS="+marks)
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	logs := testkit.ReadLog(r, nil)
	var gen2 int
	t.Cleanup(func() {
		cmd.Process.Kill()
		if gen2 != 0 {
			syscall.Kill(gen2, syscall.SIGKILL)
		}
	})
	logs.Wait(t, time.Minute, "generation 1 ready", msgIs("ready", 1))
	get := func() string {
		resp, err := testkit.NewConnClient().Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("GET /: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	gen1 := fmt.Sprintf("1 %d", cmd.Process.Pid)
	if got := get(); got != gen1 {
		t.Fatalf("GET / = %q, want %q", got, gen1)
	}

	// A new generation that exits before it is ready.
	os.WriteFile(failFile, nil, 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	failed := logs.Wait(t, time.Minute, "upgrade failed", msgIs("upgrade failed: old generation keeps serving", 1))
	if got := failed.Str("exit_status"); got != "exit status 3" {
		t.Errorf("upgrade failed: exit_status = %q, want exit status 3", got)
	}
	if tail := fmt.Sprint(failed.Fields["stderr_tail"]); !strings.Contains(tail, "fail file present") {
		t.Errorf("upgrade failed: stderr_tail = %s, want the child's last words", tail)
	}
	if got := get(); got != gen1 {
		t.Errorf("after a failed upgrade GET / = %q, want %q", got, gen1)
	}

	// A good one.
	os.Remove(failFile)
	cmd.Process.Signal(syscall.SIGHUP)
	ready := logs.Wait(t, time.Minute, "generation 2 ready", msgIs("ready", 2))
	gen2 = ready.Int("pid")
	if err := cmd.Wait(); err != nil {
		t.Errorf("generation 1 after handoff: %v, want exit status 0", err)
	}
	if got, want := get(), fmt.Sprintf("2 %d", gen2); got != want {
		t.Errorf("after upgrade GET / = %q, want %q", got, want)
	}
	b, _ := os.ReadFile(marks)
	if want := fmt.Sprintf("cleanup %d\n", cmd.Process.Pid); string(b) != want {
		t.Errorf("cleanup marks = %q, want %q (generation 1's hook, once)", b, want)
	}
}
