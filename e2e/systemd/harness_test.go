package systemd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/nspawn"
	"github.com/handoff-go/handoff/internal/testkit"
)

// The server versions the tests deploy, one after the other.
const (
	v1 = "v1.0.0-systemd"
	v2 = "v2.0.0-systemd"
)

// Paths inside the container, as the README installs them.
const (
	serverBin  = "/usr/local/bin/handoff-server"
	configFile = "/etc/handoff/handoff.toml"
	unitDir    = "/etc/systemd/system"
	loadBin    = "/usr/local/bin/loadclient"
	publicURL  = "http://127.0.0.1:8080"
)

// repo is the root of the checkout.
const repo = "../.."

var bins struct {
	once sync.Once
	dir  string
	err  error
}

// requireSupervise fails the test unless the server has supervisor mode,
// which deploy/systemd/handoff.service runs it in: without it the unit
// cannot start, and every test here would fail in a less telling way.
func requireSupervise(t testing.TB) {
	t.Helper()
	out, _ := exec.Command(binary(t, v1), "-h").CombinedOutput()
	if !strings.Contains(string(out), "-supervise") {
		t.Fatalf("the server has no -supervise flag (supervisor mode, issue 12), and deploy/systemd/handoff.service starts it with one; server -h:\n%s", out)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// binary returns the path of a static build (no cgo, no -race: the
// container's libc is not the host's) of the server of version v, or of
// "loadclient". All are built on first use, once per run.
func binary(t testing.TB, name string) string {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "handoff-systemd-bin-")
		if bins.err != nil {
			return
		}
		for _, b := range []struct{ out, pkg, version string }{
			{v1, "./cmd/server", v1},
			{v2, "./cmd/server", v2},
			{"loadclient", "./e2e/systemd/loadclient", ""},
		} {
			args := []string{"build", "-o", filepath.Join(bins.dir, b.out)}
			if b.version != "" {
				args = append(args, "-ldflags", "-X main.version="+b.version)
			}
			cmd := exec.Command("go", append(args, b.pkg)...)
			cmd.Dir = repo
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				bins.err = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return filepath.Join(bins.dir, name)
}

// suites are the systemd versions every test runs under.
var suites = []nspawn.Suite{nspawn.Trixie, nspawn.Bookworm}

// eachSuite runs f for each suite, in parallel, with its root file system.
func eachSuite(t *testing.T, f func(t *testing.T, rootfs string)) {
	nspawn.Require(t)
	binary(t, v1) // before any container is booted, all of them
	requireSupervise(t)
	for _, s := range suites {
		t.Run(fmt.Sprintf("%s-systemd-%d", s.Name, s.Systemd), func(t *testing.T) {
			t.Parallel()
			rootfs := nspawn.Rootfs(t, s)
			began := time.Now()
			f(t, rootfs)
			t.Logf("%s (systemd %d): %v", t.Name(), s.Systemd, time.Since(began).Round(time.Millisecond))
		})
	}
}

// host is a booted container with the server installed the way the README
// says: the handoff user, the binary, the config file and the units.
type host struct {
	t *testing.T
	c *nspawn.Container
}

type installOptions struct {
	socket bool // install handoff.socket too
	// dropIn is the body of a drop-in for handoff.service
	// (/etc/systemd/system/handoff.service.d/test.conf), when set.
	dropIn string
}

// boot boots rootfs and installs the server (version v1) and its units.
// Nothing is started yet. When the test ends the journal is checked for
// systemd's warnings about the service.
func boot(t *testing.T, rootfs string, o installOptions) *host {
	t.Helper()
	h := &host{t: t, c: nspawn.Boot(t, rootfs)}
	h.c.Run("useradd", "--system", "--user-group", "--home-dir", "/var/lib/handoff", "--shell", "/usr/sbin/nologin", "handoff")
	h.c.CopyFile(binary(t, v1), serverBin, 0o755)
	h.c.CopyFile(binary(t, "loadclient"), loadBin, 0o755)
	h.c.CopyFile(filepath.Join(repo, "deploy/systemd/handoff.toml"), configFile, 0o644)
	h.c.CopyFile(filepath.Join(repo, "deploy/systemd/handoff.service"), unitDir+"/handoff.service", 0o644)
	if o.socket {
		h.c.CopyFile(filepath.Join(repo, "deploy/systemd/handoff.socket"), unitDir+"/handoff.socket", 0o644)
	}
	if o.dropIn != "" {
		h.c.WriteFile(unitDir+"/handoff.service.d/test.conf", []byte(o.dropIn), 0o644)
	}
	h.c.Run("systemctl", "daemon-reload")
	t.Cleanup(h.checkJournal)
	return h
}

// systemctl runs systemctl inside and returns its output and exit code.
func (h *host) systemctl(args ...string) (string, int) {
	h.t.Helper()
	out, err := h.c.Exec(context.Background(), append([]string{"systemctl", "--no-pager"}, args...)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, 0
	case errors.As(err, &ee):
		return out, ee.ExitCode()
	}
	h.t.Fatalf("systemctl %s: %v\n%s", strings.Join(args, " "), err, out)
	return "", 0
}

// mustSystemctl runs systemctl and fails the test unless it succeeds.
func (h *host) mustSystemctl(args ...string) string {
	h.t.Helper()
	out, code := h.systemctl(args...)
	if code != 0 {
		h.t.Fatalf("systemctl %s: exit status %d\n%s\nstatus:\n%s", strings.Join(args, " "), code, out, h.status())
	}
	return out
}

// status is `systemctl status handoff`, for failure messages.
func (h *host) status() string {
	out, _ := h.systemctl("status", "--lines=20", "handoff.service")
	return out
}

// show returns properties of a unit.
func (h *host) show(unit string, props ...string) map[string]string {
	h.t.Helper()
	out := h.mustSystemctl("show", unit, "-p", strings.Join(props, ","))
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// mainPID is systemd's MainPID of handoff.service, a pid inside.
func (h *host) mainPID() int {
	h.t.Helper()
	n, _ := strconv.Atoi(h.show("handoff.service", "MainPID")["MainPID"])
	return n
}

// info is what GET / answers.
type info struct {
	PID        int    `json:"pid"`
	Generation int    `json:"generation"`
	Version    string `json:"version"`
}

// get asks the server inside for GET / with curl, on a new connection.
func (h *host) get() (info, error) {
	out, err := h.c.Exec(context.Background(), "curl", "-sS", "--fail-with-body", "-m", "10", publicURL+"/")
	if err != nil {
		return info{}, fmt.Errorf("curl %s/: %v: %s", publicURL, err, out)
	}
	var i info
	if err := json.Unmarshal([]byte(out), &i); err != nil {
		return info{}, fmt.Errorf("GET /: %v: %q", err, out)
	}
	return i, nil
}

func (h *host) mustGet() info {
	h.t.Helper()
	i, err := h.get()
	if err != nil {
		h.t.Fatalf("%v\nstatus:\n%s", err, h.status())
	}
	return i
}

// install puts a server binary at serverBin the way a deploy must (beside
// it, then renamed over it).
func (h *host) install(version string) {
	h.t.Helper()
	h.c.CopyFile(binary(h.t, version), serverBin, 0o755)
}

// installScript installs a shell script as the server binary: a bad
// deploy the test controls.
func (h *host) installScript(script string) {
	h.t.Helper()
	h.c.WriteFile(serverBin, []byte("#!/bin/sh\n"+script+"\n"), 0o755)
}

// reload installs version and runs systemctl reload, which must succeed
// and leave version serving in a new generation, under the same main pid.
func (h *host) reload(version string) info {
	h.t.Helper()
	before := h.mustGet()
	pid := h.mainPID()
	h.install(version)
	h.mustSystemctl("reload", "handoff.service")
	after := h.mustGet()
	if after.Version != version || after.Generation <= before.Generation || after.PID == before.PID {
		h.t.Errorf("after systemctl reload to %s: GET / = %+v, want version %s in a generation after %+v", version, after, version, before)
	}
	if got := h.mainPID(); got != pid {
		h.t.Errorf("after systemctl reload: MainPID = %d, want %d (the supervisor, which never changes)", got, pid)
	}
	return after
}

// journal is the journal of this boot, all units.
func (h *host) journal() string {
	h.t.Helper()
	return h.c.Journal("-b")
}

// warnings are what systemd logs when the service and it disagree about
// its processes: a main pid systemd did not start, a notification from a
// process that is not the main one.
var warnings = regexp.MustCompile(`(?i).*(not our child|reception only permitted|notification message from PID).*`)

// checkJournal fails the test if systemd logged any of the warnings.
func (h *host) checkJournal() {
	for _, w := range warnings.FindAllString(h.journal(), 20) {
		h.t.Errorf("journal: %s", w)
	}
	if h.t.Failed() {
		h.t.Logf("journal of handoff.service:\n%s", tailLines(h.c.Journal("-b", "-u", "handoff.service", "-u", "handoff.socket"), 80))
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// summary is what the load client prints when it stops.
type summary struct {
	OK       map[string]int            `json:"ok"`
	Failed   map[string]map[string]int `json:"failed"`
	Examples []string                  `json:"examples"`
	Versions map[string]int            `json:"versions"`
}

func (s summary) ok() (n int) {
	for _, c := range s.OK {
		n += c
	}
	return n
}

func (s summary) failures() (n int) {
	for _, m := range s.Failed {
		for _, c := range m {
			n += c
		}
	}
	return n
}

func (s summary) String() string {
	var kinds []string
	for k := range s.OK {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var b strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&b, "%s: %d ok, failed %v; ", k, s.OK[k], s.Failed[k])
	}
	fmt.Fprintf(&b, "versions %v", s.Versions)
	return b.String()
}

// load is the load client running inside the container.
type load struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *testkit.LogBook // its stdout, line by line; closed at EOF
	cancel context.CancelFunc
	done   bool
}

// startLoad starts the load client inside, against the public address,
// and waits until it has had a request answered.
func (h *host) startLoad() *load {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	cmd := h.c.Command(ctx, loadBin, "-addr", "127.0.0.1:8080", "-keepalive", "3", "-newconn", "2", "-pause", "5ms")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	l := &load{t: h.t, cmd: cmd, stdin: stdin, out: testkit.ReadLog(stdout, nil), cancel: cancel}
	h.t.Cleanup(func() { l.stop() }) // if the test did not stop it
	first, err := l.out.Await(time.Minute, func(testkit.LogLine) bool { return true })
	if err != nil || first.Raw != "running" {
		h.t.Fatalf("load client: first line %q, %v; want %q; stderr: %s\nstatus:\n%s", first.Raw, err, "running", stderr.String(), h.status())
	}
	return l
}

// stop ends the load (each client finishes the request it has in
// flight) and returns its summary.
func (l *load) stop() summary {
	l.t.Helper()
	if l.done {
		return summary{}
	}
	l.done = true
	defer l.cancel()
	l.stdin.Close()
	<-l.out.Done() // the client printed its summary and exited
	var s summary
	var last string
	if lines := l.out.All(); len(lines) > 0 {
		last = lines[len(lines)-1].Raw
	}
	if err := l.cmd.Wait(); err != nil {
		l.t.Errorf("load client: %v", err)
	}
	if err := json.Unmarshal([]byte(last), &s); err != nil {
		l.t.Fatalf("load client summary %q: %v", last, err)
	}
	return s
}

// checkLoad reports the counts and fails the test on any failed request
// or on too little traffic to mean anything.
func checkLoad(t *testing.T, what string, s summary) {
	t.Helper()
	t.Logf("%s: %d requests ok, %d failed (%s)", what, s.ok(), s.failures(), s)
	if n := s.failures(); n > 0 {
		t.Errorf("%s: %d failed requests, want 0; first failures:\n%s", what, n, strings.Join(s.Examples, "\n"))
	}
	if s.ok() < 100 {
		t.Errorf("%s: only %d requests answered: the load did not run", what, s.ok())
	}
}
