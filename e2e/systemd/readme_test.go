package systemd_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/nspawn"
)

// The README's install steps for systemd sit between these two lines, in
// one ```sh block; TestReadmeInstallStepsRun runs them verbatim.
const (
	readmeBegin = "<!-- systemd-install: begin (run verbatim by e2e/systemd) -->"
	readmeEnd   = "<!-- systemd-install: end -->"
)

// installSteps returns the shell code of the README's marked block.
func installSteps(readme string) (string, error) {
	_, rest, ok := strings.Cut(readme, readmeBegin)
	if !ok {
		return "", fmt.Errorf("no line %q", readmeBegin)
	}
	block, _, ok := strings.Cut(rest, readmeEnd)
	if !ok {
		return "", fmt.Errorf("no line %q after %q", readmeEnd, readmeBegin)
	}
	block = strings.TrimSpace(block)
	code, ok := strings.CutPrefix(block, "```sh\n")
	if !ok {
		return "", errors.New("the marked block does not start with ```sh")
	}
	code, ok = strings.CutSuffix(code, "\n```")
	if !ok || strings.Contains(code, "```") {
		return "", errors.New("the marked block is not one ```sh code block")
	}
	return code + "\n", nil
}

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeInstallSteps checks, without root, that the README's systemd
// install steps are there and do each thing a fresh host needs.
func TestReadmeInstallSteps(t *testing.T) {
	code, err := installSteps(readme(t))
	if err != nil {
		t.Fatalf("README.md, section Running under systemd: %v", err)
	}
	for _, step := range []string{
		"useradd --system", "install -d", "/etc/handoff/handoff.toml", "/etc/systemd/system/",
		"systemctl daemon-reload", "systemctl enable --now", "systemctl reload handoff",
		"scripts/deploy.sh", "systemctl stop",
	} {
		if !strings.Contains(code, step) {
			t.Errorf("README's systemd install steps lack %q:\n%s", step, code)
		}
	}
}

func TestInstallStepsExtraction(t *testing.T) {
	for _, tc := range []struct {
		name, readme, want string
		ok                 bool
	}{
		{"block", "x\n" + readmeBegin + "\n```sh\na\nb\n```\n" + readmeEnd + "\ny", "a\nb\n", true},
		{"no begin", "```sh\na\n```\n" + readmeEnd, "", false},
		{"no end", readmeBegin + "\n```sh\na\n```\n", "", false},
		{"not sh", readmeBegin + "\n```\na\n```\n" + readmeEnd, "", false},
		{"two blocks", readmeBegin + "\n```sh\na\n```\n```sh\nb\n```\n" + readmeEnd, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := installSteps(tc.readme)
			if got != tc.want || (err == nil) != tc.ok {
				t.Errorf("installSteps = %q, %v; want %q (ok %v)", got, err, tc.want, tc.ok)
			}
		})
	}
}

// TestReadmeInstallStepsRun runs the README's install steps verbatim, as
// root in a fresh container, from a copy of the repository's files with the
// binary built as ./server and a newer one as ./server.new, as the README
// says. The steps end with a stop, which must be clean.
func TestReadmeInstallStepsRun(t *testing.T) {
	code, err := installSteps(readme(t))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	eachSuite(t, func(t *testing.T, rootfs string) {
		h := &host{t: t, c: nspawn.Boot(t, rootfs)}
		const dir = "/root/handoff"
		h.c.CopyFile(binary(t, v1), dir+"/server", 0o755)
		h.c.CopyFile(binary(t, v2), dir+"/server.new", 0o755)
		for _, f := range []string{"deploy/systemd/handoff.service", "deploy/systemd/handoff.socket", "deploy/systemd/handoff.toml", "scripts/deploy.sh"} {
			mode := os.FileMode(0o644)
			if strings.HasSuffix(f, ".sh") {
				mode = 0o755
			}
			h.c.CopyFile(filepath.Join(repo, f), dir+"/"+f, mode)
		}
		h.c.WriteFile(dir+"/install.sh", []byte(code), 0o644)
		t.Cleanup(h.checkJournal)
		out, err := h.c.Exec(t.Context(), "sh", "-c", "cd "+dir+" && bash -xeuo pipefail install.sh")
		t.Logf("README install steps:\n%s", out)
		if err != nil {
			t.Fatalf("README install steps: %v\nstatus:\n%s", err, h.status())
		}
		// The steps deployed server.new, then stopped the service: the
		// generation that cleaned up last must be of server.new.
		var pid int
		versions := map[int]string{}
		for _, e := range events(h.c.Journal("-b", "-u", "handoff.service", "-o", "cat")) {
			switch e.Msg() {
			case "starting":
				versions[e.Int("pid")] = e.Str("version")
			case "cleanup done":
				pid = e.Int("pid")
			}
		}
		if pid == 0 || versions[pid] != v2 {
			t.Fatalf("the journal's last cleanup is from pid %d, version %q; want one from a generation of %s (server.new)", pid, versions[pid], v2)
		}
		h.checkCleanStop(pid)
	})
}
