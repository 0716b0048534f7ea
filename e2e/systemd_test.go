package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"golang.org/x/sys/unix"
)

// notifySocket is a fake systemd notify socket: it records every message
// with the pid of the process that sent it (SO_PASSCRED).
type notifySocket struct {
	path string
	testkit.Book[notifyMsg]
}

type notifyMsg struct {
	pid    int
	fields map[string]string
	raw    string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(testkit.ShortTempDir(t), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	go func() { // ends when the test closes the socket
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
		for {
			nb, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := notifyMsg{raw: string(buf[:nb]), fields: map[string]string{}}
			if cmsgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil && len(cmsgs) > 0 {
				if cred, err := unix.ParseUnixCredentials(&cmsgs[0]); err == nil {
					m.pid = int(cred.Pid)
				}
			}
			for _, line := range strings.Split(m.raw, "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					m.fields[k] = v
				}
			}
			n.Add(m)
		}
	}()
	return n
}

// waitFor waits until a message from pid has field key.
func (n *notifySocket) waitFor(t *testing.T, pid int, key string) notifyMsg {
	t.Helper()
	m, err := n.Await(time.Minute, func(m notifyMsg) bool {
		_, ok := m.fields[key]
		return ok && m.pid == pid
	})
	if err != nil {
		t.Fatalf("waiting for notify %s from pid %d: %v; messages so far: %v", key, pid, err, n.All())
	}
	return m
}

// The Type=notify-reload protocol: the exact messages, and who sends each,
// for a start, a good reload, a failed reload and a stop. Under
// NotifyAccess=main only the main process is heard, so every message must
// come from the process systemd takes as main at that moment.
func TestSystemdNotifySequence(t *testing.T) {
	n := newNotifySocket(t)
	s := start(t, startOptions{env: []string{"NOTIFY_SOCKET=" + n.path}})
	p1 := s.pidOf(1)
	n.waitFor(t, p1, "READY")

	s.install(v2)
	s.signal(p1, syscall.SIGHUP)
	p2 := s.waitReady(2)
	n.waitFor(t, p1, "MAINPID")
	s.waitExit(p1, time.Minute)

	s.installScript("echo 'fatal: bad build' >&2\nexit 3")
	s.signal(p2, syscall.SIGHUP)
	s.logs.Wait(t, time.Minute, "the failed upgrade", func(l testkit.LogLine) bool { return l.Msg() == failedEvent })
	n.waitFor(t, p2, "STATUS")
	testkit.WaitFor(t, time.Minute, "READY after the failed reload", func() error {
		if n.Len() < 5 {
			return fmt.Errorf("%d messages", n.Len())
		}
		return nil
	})

	s.install(v2)
	s.signal(p2, syscall.SIGTERM)
	s.waitExit(p2, time.Minute)

	type want struct {
		pid  int
		keys []string // fields that must be there
	}
	wants := []want{
		{p1, []string{"READY", "STATUS"}},
		{p1, []string{"RELOADING", "MONOTONIC_USEC", "STATUS"}},
		{p1, []string{"MAINPID", "READY", "STATUS"}},
		{p2, []string{"RELOADING", "MONOTONIC_USEC", "STATUS"}},
		{p2, []string{"READY", "STATUS"}},
		{p2, []string{"STOPPING", "STATUS"}},
		{p2, []string{"EXTEND_TIMEOUT_USEC", "STATUS"}},
	}
	got := n.All()
	if len(got) != len(wants) {
		t.Errorf("%d notify messages, want %d", len(got), len(wants))
	}
	for i, w := range wants {
		if i >= len(got) {
			break
		}
		m := got[i]
		if m.pid != w.pid || len(m.fields) != len(w.keys) {
			t.Errorf("message %d from pid %d: %q; want fields %v from pid %d", i, m.pid, m.raw, w.keys, w.pid)
			continue
		}
		for _, k := range w.keys {
			if _, ok := m.fields[k]; !ok {
				t.Errorf("message %d: %q lacks %s", i, m.raw, k)
			}
		}
	}
	if len(got) == len(wants) {
		if got[2].fields["MAINPID"] != strconv.Itoa(p2) || got[2].fields["READY"] != "1" {
			t.Errorf("after the good reload: %q, want MAINPID=%d and READY=1", got[2].raw, p2)
		}
		if !strings.Contains(got[4].fields["STATUS"], "upgrade failed") || !strings.Contains(got[4].fields["STATUS"], "exit status 3") {
			t.Errorf("after the failed reload: STATUS=%q, want the reason", got[4].fields["STATUS"])
		}
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		if usec, err := strconv.ParseInt(got[1].fields["MONOTONIC_USEC"], 10, 64); err != nil || usec <= 0 || usec > ts.Nano()/1000 {
			t.Errorf("MONOTONIC_USEC=%q, want a CLOCK_MONOTONIC time in microseconds before now (%d)", got[1].fields["MONOTONIC_USEC"], ts.Nano()/1000)
		}
	}
	for i, m := range got {
		t.Logf("notify %d from pid %d: %q", i, m.pid, m.raw)
	}
}

// Socket activation: the first generation takes its public listener from
// the fd systemd passes (LISTEN_FDS, LISTEN_FDNAMES=public), overriding
// -addr; later generations inherit it, and never see LISTEN_*.
func TestSocketActivation(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // the server's copy (fd 3) keeps the socket open
	activated := ln.Addr().String()
	configured := testkit.FreeAddr(t)
	s := start(t, startOptions{
		addr:       configured,
		extraFiles: []*os.File{f},
		env:        []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=public"},
	})
	f.Close()

	listening := s.logs.Wait(t, time.Minute, "the activated listener", func(l testkit.LogLine) bool {
		return l.Msg() == "listening" && l.Str("activation_name") == "public"
	})
	if listening.Str("addr") != activated {
		t.Errorf("activated listener on %s, want %s", listening.Str("addr"), activated)
	}
	c := testkit.NewConnClient()
	if _, err := c.Get("http://" + configured + "/"); err == nil {
		t.Errorf("-addr %s is served too; socket activation should replace it", configured)
	}
	info, _ := getRoot(t, c, "http://"+activated+"/")

	stop, tl := backgroundLoad(activated)
	waitRequests(t, tl, 200)
	s.signal(info.PID, syscall.SIGHUP)
	p2 := s.waitReady(2)
	waitRequests(t, tl, total(tl)+200)
	stop()
	if tl.failures() != 0 {
		t.Errorf("%d requests failed across the upgrade of an activated socket: %v", tl.failures(), tl.examples)
	}
	inherited := s.logs.Find(func(l testkit.LogLine) bool {
		return l.Msg() == "listening" && l.Int("pid") == p2 && l.Str("activation_name") == "public"
	})
	if len(inherited) != 1 || inherited[0].Fields["inherited"] != true || inherited[0].Str("addr") != activated {
		t.Errorf("generation 2 listening events %v, want the activated socket, inherited", inherited)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p2))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(string(env), "\x00") {
		if strings.HasPrefix(kv, "LISTEN_") {
			t.Errorf("generation 2 has %s in its environment; it is the first generation's only", kv)
		}
	}
	if info, _ := getRoot(t, c, "http://"+activated+"/"); info.Generation != 2 {
		t.Errorf("after the upgrade generation %d answers, want 2", info.Generation)
	}
}

// -shutdown-delay: after SIGTERM the server keeps serving, new connections
// included, with /readyz failing, and only then drains; as Kubernetes
// needs while it removes the pod from its endpoints.
func TestShutdownDelay(t *testing.T) {
	const delay = 1500 * time.Millisecond
	s := start(t, startOptions{args: []string{"-shutdown-delay", delay.String()}})
	pid := s.pidOf(1)
	c := testkit.NewConnClient()
	sent := time.Now()
	s.signal(pid, syscall.SIGTERM)

	served, notReady := 0, 0
	for time.Since(sent) < delay*2/3 { // well inside the delay
		resp, err := c.Get(s.url("/readyz"))
		if err != nil {
			t.Fatalf("GET /readyz during the shutdown delay: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			notReady++
		}
		resp, err = c.Get(s.url("/"))
		if err != nil {
			t.Fatalf("GET / on a new connection during the shutdown delay: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			served++
		}
	}
	if notReady == 0 || served == 0 {
		t.Errorf("during the shutdown delay: %d not-ready answers, %d served; want both", notReady, served)
	}
	if st := s.waitExit(pid, time.Minute); st != 0 {
		t.Errorf("exit status = %d, want 0", st)
	}
	stopping := s.logs.Wait(t, time.Second, "stopping", func(l testkit.LogLine) bool { return l.Msg() == "stopping" })
	drain := s.logs.Wait(t, time.Second, "drain started", func(l testkit.LogLine) bool { return l.Msg() == "drain started" })
	t0, _ := time.Parse(time.RFC3339Nano, stopping.Str("time"))
	t1, _ := time.Parse(time.RFC3339Nano, drain.Str("time"))
	if got := t1.Sub(t0); got < delay {
		t.Errorf("drain began %v after the stop, want at least the %v delay", got, delay)
	}
	t.Logf("shutdown delay: %d requests served and %d /readyz 503s in the first %v; drain began %v after SIGTERM",
		served, notReady, delay*2/3, t1.Sub(t0))
}
