// Package readme runs the README's commands as a newcomer would paste
// them, so that the README cannot drift from the code.
//
// A fenced block right after a line `<!-- readme-test: KIND -->` is run,
// in README order, in a copy of the repository's tracked files:
//
//	start      the quick start's server: built and run in the background
//	           until the end (or until a block shuts it down)
//	with-server a shell block that needs that server running; it is
//	           started again if a block before stopped it
//	free-port  a shell block that needs the server's port free
//	adopt      the Go program of "Adopt it in your service": built against
//	           this copy, run, hot-restarted and stopped
//
// The only changes made to what is pasted: 127.0.0.1:8080 becomes a free
// loopback port, and HANDOFF_ADDR names it for a server run without -addr.
package readme

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// block is a fenced block of the README marked for this test.
type block struct {
	kind string
	line int // of the opening fence
	lang string
	text string
}

func readBlocks(t *testing.T, path string) []block {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	marker := regexp.MustCompile(`^<!-- readme-test: ([a-z-]+) -->$`)
	var out []block
	var cur *block
	kind := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && line == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case kind != "" && strings.HasPrefix(line, "```"):
			cur = &block{kind: kind, line: n, lang: strings.TrimPrefix(line, "```")}
			kind = ""
		case marker.MatchString(line):
			kind = marker.FindStringSubmatch(line)[1]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestREADME(t *testing.T) {
	for _, tool := range []string{"go", "curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the README's commands need %s on PATH", tool)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	blocks := readBlocks(t, filepath.Join(root, "README.md"))
	want := map[string]bool{"start": true, "with-server": true, "free-port": true, "adopt": true}
	for _, b := range blocks {
		if !want[b.kind] {
			t.Fatalf("README.md:%d: unknown readme-test kind %q", b.line, b.kind)
		}
	}
	if len(blocks) < 4 {
		t.Fatalf("README.md has %d blocks marked for this test; the quick start, the restart, the deploy and the adoption at least", len(blocks))
	}
	dir := copyRepo(t, root)
	addr := testkit.FreeAddr(t)
	r := &runner{t: t, dir: dir, addr: addr}
	t.Cleanup(r.stopServer)
	for _, b := range blocks {
		text := strings.ReplaceAll(b.text, "127.0.0.1:8080", addr)
		name := fmt.Sprintf("README.md:%d", b.line)
		switch b.kind {
		case "start":
			r.start = text
			r.startServer(name)
		case "with-server":
			if !r.serverUp() {
				r.startServer(name)
			}
			out := r.shell(name, text)
			if strings.Contains(text, "ctl shutdown") {
				r.waitServerGone(name)
			}
			checkOutput(t, name, text, out)
		case "free-port":
			r.stopServer()
			r.shell(name, text)
		case "adopt":
			r.stopServer()
			r.adopt(name, text)
		}
	}
}

// checkOutput checks what the comments of a block promise that can be
// checked: a curl after ctl upgrade reaches generation 2.
func checkOutput(t *testing.T, name, text, out string) {
	t.Helper()
	if strings.Contains(text, "ctl upgrade") && strings.Contains(text, "curl") &&
		!strings.Contains(out, `"generation":2`) {
		t.Errorf("%s: no answer from generation 2 after ctl upgrade; output:\n%s", name, out)
	}
}

type runner struct {
	t     *testing.T
	dir   string
	addr  string
	start string // the quick start's command
	srv   *exec.Cmd
	log   bytes.Buffer
	done  chan struct{}
}

// env is the environment of pasted commands: this one, less the server's
// own variables, with HANDOFF_ADDR naming the test's port.
func (r *runner) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HANDOFF_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") || strings.HasPrefix(kv, "LISTEN_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HANDOFF_ADDR="+r.addr)
}

// shell runs a block as a shell runs pasted lines, stopping at the first
// that fails, and returns its output.
func (r *runner) shell(name, text string) string {
	r.t.Helper()
	cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", text)
	cmd.Dir = r.dir
	cmd.Env = r.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			r.t.Fatalf("%s: %v; output:\n%s\nserver log:\n%s", name, err, out.String(), r.log.String())
		}
	case <-time.After(5 * time.Minute):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		r.t.Fatalf("%s: still running after 5 minutes; output:\n%s", name, out.String())
	}
	r.t.Logf("%s:\n%s", name, out.String())
	return out.String()
}

// startServer runs the quick start's command in the background, in a
// process group of its own, and waits until the server answers.
func (r *runner) startServer(name string) {
	r.t.Helper()
	if r.start == "" {
		r.t.Fatalf("%s needs the quick start's server, but no block before it is marked start", name)
	}
	r.log.Reset()
	cmd := exec.Command("bash", "-e", "-c", r.start)
	cmd.Dir = r.dir
	cmd.Env = r.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = &r.log, &r.log
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.srv = cmd
	r.done = make(chan struct{})
	go func() { cmd.Wait(); close(r.done) }()   // ends when the shell exits
	deadline := time.Now().Add(5 * time.Minute) // the first build compiles SQLite
	for !r.serverUp() {
		select {
		case <-r.done:
			r.t.Fatalf("%s: the quick start's server exited:\n%s", name, r.log.String())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: the quick start's server does not answer on %s:\n%s", name, r.addr, r.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *runner) serverUp() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + r.addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// waitServerGone waits for the quick start's shell, and so its server, to
// end, as a ctl shutdown makes it.
func (r *runner) waitServerGone(name string) {
	r.t.Helper()
	if r.srv == nil {
		return
	}
	select {
	case <-r.done:
		r.srv = nil
	case <-time.After(time.Minute):
		r.t.Fatalf("%s: the server did not exit after ctl shutdown:\n%s", name, r.log.String())
	}
}

// stopServer stops the quick start's server, if it runs: SIGTERM to its
// process group (every generation), then SIGKILL.
func (r *runner) stopServer() {
	if r.srv == nil {
		return
	}
	syscall.Kill(-r.srv.Process.Pid, syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-r.srv.Process.Pid, syscall.SIGKILL)
		<-r.done
	}
	r.srv = nil
}

// adopt builds the README's program against this copy of the module, runs
// it, upgrades it with SIGHUP and stops it with SIGTERM.
func (r *runner) adopt(name, src string) {
	r.t.Helper()
	mod := filepath.Join(r.t.TempDir(), "adopt")
	os.MkdirAll(mod, 0o755)
	goMod := "module example.com/adopt\n\ngo 1.26\n\nrequire github.com/handoff-go/handoff v0.0.0\n\n" +
		"replace github.com/handoff-go/handoff => " + r.dir + "\n"
	sum, err := os.ReadFile(filepath.Join(r.dir, "go.sum"))
	if err != nil {
		r.t.Fatal(err)
	}
	for f, b := range map[string][]byte{"go.mod": []byte(goMod), "go.sum": sum, "main.go": []byte(src)} {
		if err := os.WriteFile(filepath.Join(mod, f), b, 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"mod", "tidy"}, {"build", "-o", "service", "."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			r.t.Fatalf("%s: go %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	var logs bytes.Buffer
	cmd := exec.Command("./service")
	cmd.Dir = mod
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			<-exited
		}
	}()
	get := func(want string) {
		r.t.Helper()
		deadline := time.Now().Add(time.Minute)
		var last string
		for time.Now().Before(deadline) {
			resp, err := (&http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Get("http://" + r.addr + "/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				last = string(b)
				if strings.Contains(last, want) {
					return
				}
			} else {
				last = err.Error()
			}
			time.Sleep(50 * time.Millisecond)
		}
		r.t.Fatalf("%s: GET / answers %q, want %q; logs:\n%s", name, last, want, logs.String())
	}
	get("hello from generation 1")
	cmd.Process.Signal(syscall.SIGHUP)
	get("hello from generation 2")
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		waited = true
		if err != nil {
			r.t.Errorf("%s: the adopted service exited with %v after SIGTERM, want 0; logs:\n%s", name, err, logs.String())
		}
	case <-time.After(time.Minute):
		r.t.Fatalf("%s: the adopted service did not stop after SIGTERM; logs:\n%s", name, logs.String())
	}
}

// copyRepo copies the repository's tracked files (as git lists them,
// with the working tree's content) to a new directory.
func copyRepo(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("the README test copies the repository's tracked files, and git ls-files failed: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "handoff")
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src, dst := filepath.Join(root, f), filepath.Join(dir, f)
		fi, err := os.Lstat(src)
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
