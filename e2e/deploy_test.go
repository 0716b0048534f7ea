package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// runDeploy runs scripts/deploy.sh for the server s with the new binary
// newBin, and returns its output and exit status.
func runDeploy(t *testing.T, s *server, newBin string) (string, int) {
	t.Helper()
	return runDeployIn(t, s.dir, nil, "-b", s.bin, newBin)
}

// runDeployIn runs scripts/deploy.sh ARGS in dir, as cred's user when it
// is set, and returns its output (stdout and stderr) and exit status.
func runDeployIn(t *testing.T, dir string, cred *syscall.Credential, args ...string) (string, int) {
	t.Helper()
	script, err := filepath.Abs("../scripts/deploy.sh")
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil { // a copy the other user can read
		b, err := os.ReadFile(script)
		if err != nil {
			t.Fatal(err)
		}
		script = filepath.Join(dir, "deploy.sh")
		if err := os.WriteFile(script, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("bash", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Env = baseEnv()
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// scripts/deploy.sh installs a good binary and verifies it serves; a bad
// one is rolled back, and the script fails with the reason.
func TestDeployScript(t *testing.T) {
	s := start(t, startOptions{})
	pid1 := s.pidOf(1)

	good := filepath.Join(s.dir, "server-"+v2+".new")
	installBinary(t, binary(v2), good)
	out, st := runDeploy(t, s, good)
	t.Logf("deploy of a good binary (exit %d):\n%s", st, out)
	if st != 0 || !strings.Contains(out, "deployed "+v2) {
		t.Fatalf("deploy of %s: exit %d, want 0 and 'deployed %s'", v2, st, v2)
	}
	for _, step := range []string{"1/5", "2/5", "3/5", "4/5", "5/5"} {
		if !strings.Contains(out, step) {
			t.Errorf("deploy output lacks step %s", step)
		}
	}
	pid2 := s.waitReady(2)
	if st := s.waitExit(pid1, time.Minute); st != 0 {
		t.Errorf("generation 1 exit status %d, want 0", st)
	}
	if !sameFile(t, s.bin, binary(v2)) || !sameFile(t, s.bin+".prev", binary(v1)) {
		t.Error("after the deploy the installed binary is not the new one, or .prev is not the old one")
	}

	// A build that prints its version but cannot start.
	bad := filepath.Join(s.dir, "server-bad.new")
	os.WriteFile(bad, []byte("#!/bin/sh\nif [ \"$1\" = -version ]; then echo v3-bad; exit 0; fi\necho 'fatal: bad build' >&2\nexit 3\n"), 0o755)
	out, st = runDeploy(t, s, bad)
	t.Logf("deploy of a bad binary (exit %d):\n%s", st, out)
	if st != 1 || !strings.Contains(out, "deploy failed") || !strings.Contains(out, "exit status 3") || !strings.Contains(out, "fatal: bad build") {
		t.Errorf("deploy of a bad binary: exit %d; want 1 with the reason (exit status 3, its last words)", st)
	}
	if want := fmt.Sprintf("pid %d, version %s, is serving", pid2, v2); !strings.Contains(out, want) {
		t.Errorf("deploy of a bad binary does not say %q", want)
	}
	if !strings.Contains(out, "restoring the previous binary") || !sameFile(t, s.bin, binary(v2)) {
		t.Error("after the failed deploy the previous binary is not back in place")
	}
	info, _ := getRoot(t, oneConnClient(), s.url("/"))
	if info.PID != pid2 || info.Version != v2 {
		t.Errorf("after the failed deploy pid %d version %s serves, want %d %s", info.PID, info.Version, pid2, v2)
	}

	// A file that is not a program at all never gets installed.
	junk := filepath.Join(s.dir, "junk.new")
	os.WriteFile(junk, []byte("not a program"), 0o644)
	out, st = runDeploy(t, s, junk)
	if st != 1 || !strings.Contains(out, "-version failed") || strings.Contains(out, "3/5") {
		t.Errorf("deploy of a non-program: exit %d, output:\n%s\nwant a failure at step 1", st, out)
	}
	if !sameFile(t, s.bin, binary(v2)) {
		t.Error("a non-program replaced the installed binary")
	}
}

// Regression (issue 17): the README's own command, `scripts/deploy.sh -b
// ./server server.new`, failed at once with "timeout: failed to run
// command 'server.new': No such file or directory" (a name without a
// slash is looked up in PATH), and the script made the new file
// executable without a word. Now it runs verbatim, says that the file is
// not executable, installs an executable copy, and leaves the file alone.
func TestDeployScriptREADMECommand(t *testing.T) {
	s := start(t, startOptions{})
	pid1 := s.pidOf(1)
	b, err := os.ReadFile(binary(v2))
	if err != nil {
		t.Fatal(err)
	}
	newFile := filepath.Join(s.dir, "server.new")
	if err := os.WriteFile(newFile, b, 0o644); err != nil { // as a download leaves it
		t.Fatal(err)
	}
	out, st := runDeployIn(t, s.dir, nil, "-b", "./server", "server.new")
	t.Logf("scripts/deploy.sh -b ./server server.new (exit %d):\n%s", st, out)
	if st != 0 || !strings.Contains(out, "deployed "+v2) {
		t.Fatalf("scripts/deploy.sh -b ./server server.new: exit %d, want 0 and 'deployed %s'", st, v2)
	}
	if !strings.Contains(out, "server.new is not executable: checking and installing a copy with mode 0755") {
		t.Error("deploy of a non-executable file does not say that it installs an executable copy")
	}
	if fi, err := os.Stat(newFile); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("server.new after the deploy: %v %v, want it left at mode 0644", fi.Mode(), err)
	}
	if fi, err := os.Stat(s.bin); err != nil || fi.Mode().Perm() != 0o755 || !sameFile(t, s.bin, binary(v2)) {
		t.Errorf("installed binary: mode %v (%v), want the new build with mode 0755", fi.Mode(), err)
	}
	s.waitReady(2)
	if st := s.waitExit(pid1, time.Minute); st != 0 {
		t.Errorf("generation 1 exit status %d, want 0", st)
	}
}

// Regression (issue 17): with no server running, deploy.sh installed the
// new binary, failed to upgrade, and said "the old generation is still
// serving". Now it checks first, says what is true, and installs nothing.
func TestDeployScriptWithoutServer(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	installBinary(t, binary(v1), filepath.Join(dir, "server"))
	installBinary(t, binary(v2), filepath.Join(dir, "server.new"))
	out, st := runDeployIn(t, dir, nil, "-b", "./server", "server.new")
	t.Logf("deploy with no server running (exit %d):\n%s", st, out)
	if st != 1 || !strings.Contains(out, "deploy failed: no server answers") || !strings.Contains(out, "nothing was installed") {
		t.Errorf("deploy with no server running: exit %d; want 1, saying that no server answers and nothing was installed", st)
	}
	if strings.Contains(out, "still serving") || strings.Contains(out, "is serving") {
		t.Error("deploy with no server running claims that a generation is serving")
	}
	if !sameFile(t, filepath.Join(dir, "server"), binary(v1)) {
		t.Error("deploy with no server running replaced the installed binary")
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Errorf("directory after the failed deploy holds %q, want only server and server.new", names)
	}
}

// Regression (issue 17): the usage text was cut off after its ninth line.
// -h prints all of it and exits 0; a usage error prints it and exits 2.
func TestDeployScriptUsage(t *testing.T) {
	script, err := os.ReadFile("../scripts/deploy.sh")
	if err != nil {
		t.Fatal(err)
	}
	// The comment block after the #! line, without its "# ".
	var want []string
	for _, line := range strings.Split(string(script), "\n")[1:] {
		if !strings.HasPrefix(line, "#") {
			break
		}
		want = append(want, strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
	}
	wantText := strings.Join(want, "\n") + "\n"
	if len(want) < 10 || !strings.Contains(wantText, "Exit status 2 is a usage error") {
		t.Fatalf("deploy.sh's usage comment is %d lines; the test reads it wrong", len(want))
	}
	dir := testkit.ShortTempDir(t)
	for _, tt := range []struct {
		args    []string
		status  int
		mistake string // the first line, before the usage
	}{
		{[]string{"-h"}, 0, ""},
		{nil, 2, "deploy.sh: NEW_BINARY is missing\n\n"},
		{[]string{"-x"}, 2, "deploy.sh: unknown option -x\n\n"},
		{[]string{"-b"}, 2, "deploy.sh: -b needs a value\n\n"},
		{[]string{"new", "extra"}, 2, "deploy.sh: unexpected argument extra (CTL_FLAGS go after --)\n\n"},
	} {
		out, st := runDeployIn(t, dir, nil, tt.args...)
		if st != tt.status || out != tt.mistake+wantText {
			t.Errorf("deploy.sh %q: exit %d, printed:\n%s\nwant exit %d, %q and the whole usage comment:\n%s", tt.args, st, out, tt.status, tt.mistake, wantText)
		}
	}
}

// Regression (issue 17): run by a user who cannot write the install
// directory, deploy.sh stopped with cp's own message. It says to run it as
// root or with sudo, and touches nothing.
func TestDeployScriptPermissionDenied(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the script as another uid")
	}
	dir := testkit.ShortTempDir(t)
	os.Chmod(dir, 0o755) // others may read it, not write it
	installBinary(t, binary(v1), filepath.Join(dir, "server"))
	installBinary(t, binary(v2), filepath.Join(dir, "server.new"))
	out, st := runDeployIn(t, dir, &syscall.Credential{Uid: 65534, Gid: 65534}, "-b", "./server", "server.new")
	t.Logf("deploy as uid 65534 (exit %d):\n%s", st, out)
	if st != 1 || !strings.Contains(out, "permission denied: run as root or with sudo") {
		t.Errorf("deploy as a user who cannot write the install directory: exit %d; want 1 and 'permission denied: run as root or with sudo'", st)
	}
	if !sameFile(t, filepath.Join(dir, "server"), binary(v1)) {
		t.Error("the installed binary changed")
	}
}
