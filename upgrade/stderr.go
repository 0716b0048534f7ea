package upgrade

import (
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
)

// tailLines and tailLineMax bound the stderr kept from a starting child.
const (
	tailLines   = 20
	tailLineMax = 500
)

// tee copies what a starting generation writes to its stderr, a pipe, to
// the service's stderr, and keeps the last lines, so that a generation
// that fails before it is ready is reported with what it said.
type tee struct {
	tail tail
	done chan struct{} // closed when the pipe's last writer has let go
}

// startTee copies r to w until r ends: when the child becomes ready (it
// puts the service's stderr back on fd 2), or dies.
func startTee(r *os.File, w io.Writer) *tee {
	t := &tee{done: make(chan struct{})}
	go func() { // ends when the pipe's write ends are all closed
		defer close(t.done)
		defer r.Close()
		io.Copy(io.MultiWriter(w, &t.tail), r)
	}()
	return t
}

// lines waits briefly for the child's stderr to end, and returns its last
// lines.
func (t *tee) lines() []string {
	select {
	case <-t.done:
	case <-time.After(2 * time.Second):
	}
	return t.tail.lines()
}

// tail keeps the last lines written to it.
type tail struct {
	mu      sync.Mutex
	partial []byte
	ring    []string
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial = append(t.partial, p...)
	for {
		i := strings.IndexByte(string(t.partial), '\n')
		if i < 0 {
			break
		}
		t.push(string(t.partial[:i]))
		t.partial = t.partial[i+1:]
	}
	if len(t.partial) > 4*tailLineMax { // a very long line: keep its start
		t.push(string(t.partial))
		t.partial = nil
	}
	return len(p), nil
}

func (t *tail) push(line string) {
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return
	}
	if len(line) > tailLineMax {
		line = line[:tailLineMax] + "…"
	}
	t.ring = append(t.ring, line)
	if len(t.ring) > tailLines {
		t.ring = t.ring[len(t.ring)-tailLines:]
	}
}

func (t *tail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.ring...)
	if len(t.partial) > 0 {
		out = append(out, string(t.partial))
	}
	return out
}

// envTerminal is set, to 1, in the environment of every generation of a
// service whose stderr is a terminal: a generation's own stderr is a pipe
// until it is ready, so it cannot tell by itself.
const envTerminal = "HANDOFF_STDERR_TERMINAL"

// markTerminal records, for every later generation, that the service's
// stderr is a terminal.
func markTerminal() {
	if isatty.IsTerminal(os.Stderr.Fd()) {
		os.Setenv(envTerminal, "1")
	}
}

// StderrIsTerminal reports whether the service's stderr is a terminal:
// this process's own, or, for a generation started by an upgrade, that of
// the process the service was started as. A program that picks a human log
// format for a terminal asks this rather than isatty, so that every
// generation logs in the format the first one chose.
func StderrIsTerminal() bool {
	return os.Getenv(envTerminal) == "1" || isatty.IsTerminal(os.Stderr.Fd())
}
