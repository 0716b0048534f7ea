package main_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/handoff-go/handoff/internal/testkit"
)

// The command's tests run the real binaries: handoff-check, the reference
// server and the baseline, built once into a temporary directory.
var bin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "handoff-check-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = dir
	for name, pkg := range map[string]string{"handoff-check": ".", "server": "../server", "baseline": "../../scripts/baseline"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// result is one run of handoff-check.
type result struct {
	code           int
	stdout, stderr string
	report         map[string]any // from -json, when the run wrote it
}

var lastLine = regexp.MustCompile(`^requests=(\d+) failed=(\d+) restarts=(\d+) generations=(\d+)$`)

// check runs handoff-check in dir with args and -json, and checks the
// contract of its output: a last line of counts, and nothing of the
// server left running.
func check(t *testing.T, dir string, args ...string) result {
	t.Helper()
	jsonFile := filepath.Join(dir, "report.json")
	cmd := exec.Command(filepath.Join(bin, "handoff-check"), append(args, "-json", jsonFile, "-server-output", filepath.Join(dir, "server.log"))...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	t.Logf("handoff-check %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	if r.code != 2 {
		lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
		if !lastLine.MatchString(lines[len(lines)-1]) {
			t.Errorf("last line %q, want requests=N failed=M restarts=R generations=G", lines[len(lines)-1])
		}
	}
	if b, err := os.ReadFile(jsonFile); err == nil {
		if err := json.Unmarshal(b, &r.report); err != nil {
			t.Fatalf("-json: %v", err)
		}
	}
	noneRunning(t)
	return r
}

// noneRunning fails the test for any process left running from one of
// the test's binaries.
func noneRunning(t *testing.T) {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink("/proc/" + e.Name() + "/exe")
		if err == nil && strings.HasPrefix(exe, bin+"/") {
			t.Errorf("process %d (%s) still running after handoff-check exited", pid, exe)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (r result) counts(t *testing.T) (requests, failed, restarts, generations int) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	m := lastLine.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("no counts in the last line of %q", r.stdout)
	}
	n := func(s string) int { v, _ := strconv.Atoi(s); return v }
	return n(m[1]), n(m[2]), n(m[3]), n(m[4])
}

// outcome is the number of requests with outcome o in the JSON report.
func (r result) outcome(o string) int {
	m, _ := r.report["outcomes"].(map[string]any)
	v, _ := m[o].(float64)
	return int(v)
}

const restarts = "5"

// The tableflip README's server drains with a plain Shutdown: the kit must
// see the requests it loses on kept-alive connections, and exit 1.
func TestBaselineFails(t *testing.T) {
	dir := t.TempDir()
	addr := testkit.FreeAddr(t)
	r := check(t, dir, "-cmd", filepath.Join(bin, "baseline")+" -addr "+addr, "-url", "http://"+addr+"/",
		"-restart", "kill -HUP $SERVER_NEWEST_PID", "-restarts", restarts, "-interval", "500ms",
		"-gen-header", "X-Generation", "-wait", "-plot", filepath.Join(dir, "plot.svg"))
	if r.code != 1 {
		t.Errorf("exit status %d, want 1", r.code)
	}
	_, failed, rs, gens := r.counts(t)
	if failed == 0 {
		t.Error("failed=0 against the baseline, want its lost requests counted")
	}
	if r.outcome("eof")+r.outcome("reset") == 0 {
		t.Errorf("outcomes %v, want eof or reset failures", r.report["outcomes"])
	}
	if rs != 5 || gens != 6 {
		t.Errorf("restarts=%d generations=%d, want 5 and 6", rs, gens)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "plot.svg")); err != nil || !bytes.Contains(b, []byte("</svg>")) {
		t.Errorf("-plot wrote no SVG: %v", err)
	}
}

// The reference server hands over without losing a request, a POST's echo
// or a slow request in flight: exit 0.
func TestReferenceServerPasses(t *testing.T) {
	dir := t.TempDir()
	addr := testkit.FreeAddr(t)
	// -shutdown-delay keeps the server up a while after the kit's SIGTERM.
	r := check(t, dir, "-cmd", filepath.Join(bin, "server")+" -addr "+addr+" -log-level warn -shutdown-delay 300ms", "-url", "http://"+addr+"/",
		"-restart", "kill -HUP $SERVER_NEWEST_PID", "-restarts", restarts, "-interval", "500ms",
		"-post-path", "/echo", "-slow-path", "/slow?ms=200", "-gen-header", "X-Generation", "-wait", "-newconn")
	if r.code != 0 {
		t.Errorf("exit status %d, want 0", r.code)
	}
	requests, failed, rs, gens := r.counts(t)
	if requests == 0 || failed != 0 || rs != 5 || gens != 6 {
		t.Errorf("requests=%d failed=%d restarts=%d generations=%d, want requests, none failed, 5 restarts, 6 generations", requests, failed, rs, gens)
	}
	// The kit stops the server with one SIGTERM: a second one means "exit
	// now, without draining" to this server (an early kit sent it again
	// every 20 ms while it waited).
	if b, err := os.ReadFile(filepath.Join(dir, "server.log")); err != nil || bytes.Contains(b, []byte("second stop signal")) {
		t.Errorf("server log: %v; the server got a second SIGTERM at the end:\n%s", err, b)
	}
}

// Stopping the server and starting it again is no hot restart: clients
// find nothing listening meanwhile. The server the restart command starts
// is stopped at the end too.
func TestStopStartRefused(t *testing.T) {
	dir := t.TempDir()
	addr := testkit.FreeAddr(t)
	server := filepath.Join(bin, "baseline") + " -addr " + addr
	// Stop, wait for the exit, leave the port closed a moment, start, and
	// wait for the new process to be ready (so that the next restart
	// stops a server that served).
	restart := `kill -TERM $SERVER_NEWEST_PID
for i in $(seq 200); do kill -0 $SERVER_NEWEST_PID 2>/dev/null || break; sleep 0.01; done
sleep 0.2
` + server + ` 2>>started.log &
for i in $(seq 1000); do [ "$(grep -c '"ready"' started.log)" -ge $RESTART_INDEX ] && exit 0; sleep 0.01; done
exit 1`
	r := check(t, dir, "-cmd", server, "-url", "http://"+addr+"/", "-restart", restart, "-restarts", "3", "-interval", "700ms", "-newconn")
	if r.code != 1 {
		t.Errorf("exit status %d, want 1", r.code)
	}
	if r.outcome("refused") == 0 {
		t.Errorf("outcomes %v, want refused connections", r.report["outcomes"])
	}
	if _, _, rs, gens := r.counts(t); rs != 3 || gens != 4 {
		t.Errorf("restarts=%d generations=%d, want 3 and 4 (a process per start)", rs, gens)
	}
}

// Bad flags exit 2 with a message that names the flag, and start nothing.
func TestBadFlags(t *testing.T) {
	ok := []string{"-cmd", "true", "-url", "http://127.0.0.1:9/"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no cmd", []string{"-url", "http://127.0.0.1:9/"}, "-cmd is required"},
		{"no url", []string{"-cmd", "true"}, "-url is required"},
		{"remote url", []string{"-cmd", "true", "-url", "http://192.0.2.1:80/"}, "-url"},
		{"no port", []string{"-cmd", "true", "-url", "http://127.0.0.1/"}, "-url"},
		{"restarts without restart", append(ok, "-restarts", "3"), "-restart is required"},
		{"negative restarts", append(ok, "-restarts", "-1"), "-restarts"},
		{"zero interval", append(ok, "-interval", "0s"), "-interval"},
		{"bad duration", append(ok, "-duration", "soon"), "-duration"},
		{"no clients", append(ok, "-clients", "0"), "-clients"},
		{"h2 over http", append(ok, "-h2"), "-h2 is HTTP/2 over TLS"},
		{"h2c over https", []string{"-cmd", "true", "-url", "https://127.0.0.1:9/", "-h2c"}, "-h2c is HTTP/2 over cleartext"},
		{"bad post path", append(ok, "-post-path", "echo"), "-post-path"},
		{"bad header", append(ok, "-gen-header", "X Gen"), "-gen-header"},
		{"no mode", append(ok, "-h1=false"), "-h1=false"},
		{"plot dir missing", append(ok, "-plot", "/nonexistent/dir/p.svg"), "-plot"},
		{"unknown flag", append(ok, "-restars", "3"), "-restars"},
		{"argument", append(ok, "extra"), `"extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := check(t, t.TempDir(), tc.args...)
			if r.code != 2 {
				t.Errorf("exit status %d, want 2", r.code)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q does not name %s", r.stderr, tc.want)
			}
		})
	}
}

// A server that never answers: a clear error, exit 1, and its process and
// its child stopped.
func TestNeverAnswers(t *testing.T) {
	dir := t.TempDir()
	r := check(t, dir, "-cmd", "sleep 300 & echo $! > child.pid; echo $$ > server.pid; wait",
		"-url", "http://"+testkit.FreeAddr(t)+"/", "-ready-timeout", "1s", "-restart", "true", "-restarts", "2")
	if r.code != 1 {
		t.Errorf("exit status %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, "did not answer") {
		t.Errorf("stderr does not say the server did not answer: %q", r.stderr)
	}
	for _, f := range []string{"server.pid", "child.pid"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !bytes.Contains(st, []byte(") Z ")) {
			t.Errorf("%s: process %d still running", f, pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1, and its key,
// to dir/name.pem and dir/name.key.
func writeCert(t *testing.T, dir, name string) {
	t.Helper()
	testkit.SelfSigned(t, 1).WritePEM(t, filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
}

// HTTPS: HTTP/1.1 and HTTP/2 clients trust the server through -ca; with
// another CA, the server never answers and the error says why.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "server")
	writeCert(t, dir, "other")
	addr := testkit.FreeAddr(t)
	server := filepath.Join(bin, "server") + " -addr " + addr + " -tls-cert server.pem -tls-key server.key -log-level warn"
	r := check(t, dir, "-cmd", server, "-url", "https://"+addr+"/", "-ca", "server.pem", "-h2", "-duration", "1s", "-post-path", "/echo")
	if r.code != 0 {
		t.Errorf("exit status %d, want 0", r.code)
	}
	for _, m := range []string{"h1", "h2"} {
		byMode, _ := r.report["by_mode"].(map[string]any)
		counts, _ := byMode[m].(map[string]any)
		if ok, _ := counts["ok"].(float64); ok == 0 {
			t.Errorf("mode %s: no request answered OK (%v)", m, counts)
		}
	}

	r = check(t, dir, "-cmd", server, "-url", "https://"+addr+"/", "-ca", "other.pem", "-ready-timeout", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("with another CA: exit status %d, want 1 and an error about the certificate", r.code)
	}
}
