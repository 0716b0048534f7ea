package testkit_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
)

func TestWaitReturnsLastError(t *testing.T) {
	var tries atomic.Int32
	err := testkit.Wait(30*time.Millisecond, func() error {
		return fmt.Errorf("try %d", tries.Add(1))
	})
	if err == nil || err.Error() != fmt.Sprintf("try %d", tries.Load()) {
		t.Errorf("Wait of a try that always fails = %v, want the last try's error (try %d)", err, tries.Load())
	}
	if tries.Load() < 2 {
		t.Errorf("Wait tried %d times within its deadline, want it to try again", tries.Load())
	}

	tries.Store(0)
	err = testkit.Wait(time.Minute, func() error {
		if tries.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || tries.Load() != 3 {
		t.Errorf("Wait of a try that succeeds the third time = %v after %d tries, want nil after 3", err, tries.Load())
	}
}

func TestBookAwait(t *testing.T) {
	var b testkit.Book[int]
	b.Add(1)
	go func() {
		time.Sleep(20 * time.Millisecond) // the entry comes while Await waits
		b.Add(2)
	}()
	if got, err := b.Await(time.Minute, func(n int) bool { return n == 2 }); got != 2 || err != nil {
		t.Errorf("Await of an entry added later = %d, %v; want 2, nil", got, err)
	}
	if _, err := b.Await(10*time.Millisecond, func(n int) bool { return n == 3 }); err == nil || !strings.Contains(err.Error(), "not seen within") {
		t.Errorf("Await of an entry that never comes = %v, want a timeout", err)
	}
	if got := b.Find(func(n int) bool { return n > 0 }); len(got) != 2 || b.Len() != 2 {
		t.Errorf("Find = %v, Len = %d; want [1 2], 2", got, b.Len())
	}

	closed := errors.New("the writer exited")
	b.Close(closed)
	// An hour: the test would time out if Await did not end at Close.
	if _, err := b.Await(time.Hour, func(n int) bool { return n == 3 }); err != closed {
		t.Errorf("Await on a closed book = %v, want the reason it was closed", err)
	}
	select {
	case <-b.Done():
	default:
		t.Error("Done is not closed after Close")
	}
}

func TestReadLog(t *testing.T) {
	r, w := io.Pipe()
	var pids []int
	logs := testkit.ReadLog(r, func(l testkit.LogLine) { pids = append(pids, l.Int("pid")) })
	fmt.Fprintln(w, `{"message":"ready","generation":2,"pid":42}`)
	fmt.Fprintln(w, "panic: not JSON")
	w.Close()
	l := logs.Wait(t, time.Minute, "ready", func(l testkit.LogLine) bool { return l.Msg() == "ready" })
	if l.Int("generation") != 2 || l.Str("message") != "ready" {
		t.Errorf("line %+v, want generation 2", l)
	}
	raw := logs.Wait(t, time.Minute, "the panic", func(l testkit.LogLine) bool { return l.Str("level") == "raw" })
	if raw.Msg() != "panic: not JSON" {
		t.Errorf("a line that is not JSON: message %q, want its text", raw.Msg())
	}
	if _, err := logs.Await(time.Hour, func(testkit.LogLine) bool { return false }); !errors.Is(err, testkit.ErrLogEnded) {
		t.Errorf("Await after the log ended = %v, want ErrLogEnded", err)
	}
	if len(pids) != 2 || pids[0] != 42 {
		t.Errorf("onLine saw pids %v, want [42 0]", pids)
	}
}

// Start serves in-process; a Conn sends requests on one connection and
// sees the answer that closes it.
func TestStartAndConn(t *testing.T) {
	s := testkit.StartHTTP(t, upgrade.Options{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bye" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, r.URL.Path)
	}))
	c := testkit.Dial(t, s.Addr)
	for _, path := range []string{"/a", "/b", "/bye"} {
		resp, body, err := c.Get(path)
		if err != nil || string(body) != path {
			t.Fatalf("GET %s: %q, %v; want %q", path, body, err, path)
		}
		if resp.Close != (path == "/bye") {
			t.Errorf("GET %s: Connection: close %v", path, resp.Close)
		}
	}
	if _, _, err := c.Get("/"); err == nil {
		t.Error("GET on a connection the server closed: nil error, want one (a Conn never redials)")
	}
	if k := testkit.ErrorKind(fmt.Errorf("dial: %w", syscall.ECONNREFUSED)); k != "refused" {
		t.Errorf("ErrorKind(refused) = %q", k)
	}
}

// The package's rule: no shipped binary links it. Only tests import it,
// and the test program e2e/systemd/loadclient.
func TestNoShippedBinaryLinksTestkit(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "./cmd/...", "./scripts/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "github.com/handoff-go/handoff/internal/testkit" {
			t.Errorf("a command under cmd/ or scripts/ links %s (go list -deps ./cmd/... ./scripts/...)", p)
		}
	}
}
