package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// ctl runs `server ctl ARGS` from the server's directory, as the server's
// user, and returns its output and exit status. It runs a good build, not
// the installed binary, which a test may have replaced with a bad one.
func (s *server) ctl(args ...string) (stdout, stderr string, status int) {
	s.t.Helper()
	return runCtlAs(s.t, binary(v1), s.dir, nil, args...)
}

func runCtlAs(t testing.TB, bin, dir string, cred *syscall.Credential, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, append([]string{"ctl"}, args...)...)
	cmd.Dir = dir
	cmd.Env = baseEnv()
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	status := 0
	if ee, ok := err.(*exec.ExitError); ok {
		status = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run server ctl %v: %v", args, err)
	}
	return out.String(), errb.String(), status
}

// controlClient talks to the control socket of the server in dir.
func controlClient(dir string) *http.Client {
	sock := filepath.Join(dir, "data", "control.sock")
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

func (s *server) token() string {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "data", "control.token"))
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// `server ctl upgrade` returns the new generation's pid once it is ready.
func TestCtlUpgrade(t *testing.T) {
	s := start(t, startOptions{})
	pid1 := s.pidOf(1)
	s.install(v2)
	out, errOut, st := s.ctl("upgrade", "-json")
	if st != 0 {
		t.Fatalf("server ctl upgrade: exit status %d: %s%s", st, out, errOut)
	}
	var res struct {
		PID        int    `json:"pid"`
		Version    string `json:"version"`
		Generation int    `json:"generation"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("server ctl upgrade -json printed %q: %v", out, err)
	}
	if pid2 := s.waitReady(2); res.PID != pid2 || res.Version != v2 || res.Generation != 2 {
		t.Errorf("server ctl upgrade = %+v, want pid %d version %s generation 2", res, pid2, v2)
	}
	if st := s.waitExit(pid1, time.Minute); st != 0 {
		t.Errorf("generation 1 exit status %d, want 0", st)
	}
	out, _, st = s.ctl("status")
	if st != 0 || !strings.Contains(out, "generation 2") || !strings.Contains(out, "version "+v2) {
		t.Errorf("server ctl status after the upgrade (exit %d):\n%s", st, out)
	}
	out, _, st = s.ctl("upgrade")
	if st != 0 || !strings.Contains(out, "upgraded: generation 3") {
		t.Errorf("server ctl upgrade, human output (exit %d): %q", st, out)
	}
}

// Each refusal of the control API, over the real socket, while the server
// keeps serving; and none of its actions on the public listener.
func TestControlSecurity(t *testing.T) {
	s := start(t, startOptions{})
	c := controlClient(s.dir)
	tok := s.token()
	do := func(method, path, auth string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequest(method, "http://control"+path, bytes.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s on the control socket: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		name         string
		method, path string
		auth         string
		body         []byte
		want         int
	}{
		{"no token", "POST", "/shutdown", "", nil, 401},
		{"wrong token", "POST", "/shutdown", "Bearer " + strings.Repeat("0", len(tok)), nil, 401},
		{"token in query", "POST", "/shutdown?token=" + tok, "", nil, 400},
		{"wrong method", "GET", "/shutdown", "Bearer " + tok, nil, 405},
		{"oversized body", "POST", "/upgrade", "Bearer " + tok, bytes.Repeat([]byte("x"), 64<<10), 413},
		{"good", "GET", "/status", "Bearer " + tok, nil, 200},
	} {
		if got := do(tt.method, tt.path, tt.auth, tt.body); got != tt.want {
			t.Errorf("%s: %s %s = %d, want %d", tt.name, tt.method, tt.path, got, tt.want)
		}
	}

	pub := &http.Client{Timeout: 5 * time.Second}
	for _, r := range [][2]string{{"GET", "/status"}, {"POST", "/upgrade"}, {"POST", "/shutdown"}, {"GET", "/metrics"}, {"GET", "/debug/pprof/"}} {
		req, _ := http.NewRequest(r[0], s.url(r[1]), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := pub.Do(req)
		if err != nil {
			t.Fatalf("%s %s on the public listener: %v", r[0], r[1], err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Errorf("%s %s on the public listener = %d, want no such route", r[0], r[1], resp.StatusCode)
		}
	}

	t.Run("another uid", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to run a client as another uid")
		}
		// A binary and token the other user can read, outside the server's
		// private data directory.
		other := &syscall.Credential{Uid: 65534, Gid: 65534}
		pubDir := testkit.ShortTempDir(t)
		os.Chmod(pubDir, 0o755)
		installBinary(t, binary(v1), filepath.Join(pubDir, "server"))
		os.WriteFile(filepath.Join(pubDir, "token"), []byte(tok), 0o644)
		sock := filepath.Join(s.dir, "data", "control.sock")
		args := []string{"status", "-control-token-file", filepath.Join(pubDir, "token"), "-data-dir", filepath.Join(s.dir, "data")}

		// The socket is 0600 in a 0700 directory: not even a connection.
		_, errOut, st := runCtlAs(t, filepath.Join(pubDir, "server"), pubDir, other, args...)
		if st == 0 || !strings.Contains(errOut, "permission denied") {
			t.Errorf("ctl status as uid 65534: exit %d, %q; want a refused connection", st, errOut)
		}
		// Opened up by mistake, the peer check still refuses it.
		os.Chmod(s.dir, 0o755)
		os.Chmod(filepath.Join(s.dir, "data"), 0o755)
		os.Chmod(sock, 0o666)
		defer os.Chmod(filepath.Join(s.dir, "data"), 0o700)
		_, errOut, st = runCtlAs(t, filepath.Join(pubDir, "server"), pubDir, other, args...)
		if st == 0 || !strings.Contains(errOut, "peer uid 65534") || !strings.Contains(errOut, "403") {
			t.Errorf("ctl status as uid 65534 on an open socket: exit %d, %q; want 403 naming the uid", st, errOut)
		}
	})

	if got := do("GET", "/status", "Bearer "+tok, nil); got != 200 {
		t.Errorf("GET /status after the refusals = %d, want 200", got)
	}
	getRoot(t, pub, s.url("/"))
	if n := len(s.logs.Find(func(l testkit.LogLine) bool { return strings.Contains(l.Raw, tok) })); n != 0 {
		t.Errorf("the token appears in %d log lines", n)
	}
}

// A control address that is not loopback is refused at start, unless
// explicitly allowed; a loopback TCP address works with ctl.
func TestControlAddr(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	installBinary(t, binary(v1), filepath.Join(dir, "server"))
	cmd := exec.Command("./server", "-addr", testkit.FreeAddr(t), "-control-addr", "0.0.0.0:0", "-log-format", "json")
	cmd.Dir = dir
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "-control-addr") ||
		!strings.Contains(string(out), "loopback") {
		t.Errorf("start with -control-addr 0.0.0.0:0: %v, %q; want exit status 2 naming -control-addr and loopback", err, out)
	}

	caddr := testkit.FreeAddr(t)
	s := start(t, startOptions{args: []string{"-control-addr", caddr}})
	out2, errOut, st := s.ctl("status", "-control-addr", caddr)
	if st != 0 || !strings.Contains(out2, "generation 1") {
		t.Errorf("ctl status over TCP %s: exit %d, %s%s", caddr, st, out2, errOut)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "data", "control.sock")); !os.IsNotExist(err) {
		t.Errorf("with -control-addr a control socket exists too: %v", err)
	}
}

// A socket file left by a crashed run is replaced; one a live server
// accepts on is not taken over.
func TestStaleControlSocket(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o700)
	ln, err := net.Listen("unix", filepath.Join(data, "control.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // stale: the file stays, nobody accepts

	s := start(t, startOptions{dir: dir})
	if out, errOut, st := s.ctl("status"); st != 0 {
		t.Fatalf("ctl status after replacing a stale socket: exit %d, %s%s", st, out, errOut)
	}

	// A second server on the same data directory must not steal it.
	cmd := exec.Command("./server", "-addr", testkit.FreeAddr(t), "-log-format", "json")
	cmd.Dir = dir
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another running process") {
		t.Errorf("second server on the same data directory: %v, %q; want a start-up error saying the socket is in use", err, out)
	}
	if _, _, st := s.ctl("status"); st != 0 {
		t.Error("the first server's control socket stopped working")
	}
}
