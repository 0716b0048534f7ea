package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runDeploy runs scripts/deploy.sh for the server s with the new binary
// newBin, and returns its output and exit status.
func runDeploy(t *testing.T, s *server, newBin string) (string, int) {
	t.Helper()
	script, err := filepath.Abs("../scripts/deploy.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script, "-b", s.bin, newBin)
	cmd.Dir = s.dir
	cmd.Env = baseEnv()
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
	for _, step := range []string{"1/4", "2/4", "3/4", "4/4"} {
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
	if st != 1 || !strings.Contains(out, "-version failed") || strings.Contains(out, "2/4") {
		t.Errorf("deploy of a non-program: exit %d, output:\n%s\nwant a failure at step 1", st, out)
	}
	if !sameFile(t, s.bin, binary(v2)) {
		t.Error("a non-program replaced the installed binary")
	}
}
