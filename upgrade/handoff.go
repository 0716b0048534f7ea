package upgrade

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Names of the files, beyond the listeners, that a generation passes to the
// next through tableflip.
const (
	// channelFile is the child's end of a socketpair: the parent writes a
	// hello line, the child answers with a ready report, and after its
	// drain the parent writes its drain record.
	channelFile = "handoff-channel"
	// stderrFile is the stderr this service was started with. A child
	// starts with a pipe as stderr, so that the parent can report the last
	// lines of a child that fails, and puts this one back when ready.
	stderrFile = "handoff-stderr"
)

// tailLines and tailLineMax bound the stderr kept from a starting child.
const (
	tailLines   = 20
	tailLineMax = 500
)

// hello is what a parent tells the child it starts.
type hello struct {
	Generation  int           `json:"generation"`
	ParentPID   int           `json:"parent_pid"`
	Source      string        `json:"source"`
	RequestedAt time.Time     `json:"requested_at"`
	Upgrades    UpgradeCounts `json:"upgrades"`
	// Listeners are the sockets passed, as "network address" keys.
	Listeners []string `json:"listeners"`
}

// report is what a child tells its parent when it is ready.
type report struct {
	PID        int    `json:"pid"`
	Version    string `json:"version"`
	Generation int    `json:"generation"`
}

// message is one line on the channel; exactly one field is set.
type message struct {
	Hello *hello       `json:"hello,omitempty"`
	Ready *report      `json:"ready,omitempty"`
	Drain *DrainRecord `json:"drain,omitempty"`
}

// link is one end of the channel between two generations.
type link struct {
	conn net.Conn
	r    *bufio.Reader
}

func newLink(f *os.File) (*link, error) {
	defer f.Close() // FileConn holds its own copy
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return &link{conn: c, r: bufio.NewReader(c)}, nil
}

func (l *link) send(m message, timeout time.Duration) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	l.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err = l.conn.Write(append(b, '\n'))
	return err
}

// recv reads one message; a zero timeout waits for as long as it takes.
func (l *link) recv(timeout time.Duration) (message, error) {
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	l.conn.SetReadDeadline(dl)
	line, err := l.r.ReadBytes('\n')
	if err != nil {
		return message{}, err
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return message{}, fmt.Errorf("bad message from other generation: %w", err)
	}
	return m, nil
}

// spawn holds what the parent set up for one attempt to start a child.
type spawn struct {
	link    *link    // the parent's end of the channel
	stderrW *os.File // the child's stderr until it is ready
	teeDone chan struct{}
	tail    *tail
}

// prepareSpawn makes the channel and the stderr pipe for the next child and
// registers the child's ends with tableflip. It swaps os.Stderr, which
// tableflip reads when it starts the child, for the pipe: restore must be
// called once tableflip.Upgrade has returned.
func (u *Upgrader) prepareSpawn(h hello) (*spawn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "handoff-channel-parent")
	theirs := os.NewFile(uintptr(fds[1]), channelFile)
	defer theirs.Close() // AddFile keeps its own copy
	l, err := newLink(mine)
	if err != nil {
		return nil, err
	}
	if err := l.send(message{Hello: &h}, time.Second); err != nil {
		l.conn.Close()
		return nil, fmt.Errorf("write hello: %w", err)
	}
	if err := u.tf.AddFile(channelFile, theirs); err != nil {
		l.conn.Close()
		return nil, err
	}
	if err := u.tf.AddFile(stderrFile, u.stderr); err != nil {
		l.conn.Close()
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		l.conn.Close()
		return nil, err
	}
	sp := &spawn{link: l, stderrW: w, teeDone: make(chan struct{}), tail: &tail{}}
	// The tee ends when the child closes the pipe's last write end: when it
	// becomes ready, or when it dies.
	go func() {
		defer close(sp.teeDone)
		defer r.Close()
		io.Copy(io.MultiWriter(u.stderr, sp.tail), r)
	}()
	// os.Stderr is read by tableflip's goroutine only while Upgrade runs,
	// which the channel operations inside Upgrade order after this write.
	os.Stderr = w
	return sp, nil
}

// restore undoes the os.Stderr swap and drops the parent's copy of the
// pipe, so that the tee ends when the child lets go of it.
func (sp *spawn) restore(stderr *os.File) {
	os.Stderr = stderr
	sp.stderrW.Close()
}

// stderrTail waits briefly for the child's stderr to end, and returns its
// last lines.
func (sp *spawn) stderrTail() []string {
	select {
	case <-sp.teeDone:
	case <-time.After(2 * time.Second):
	}
	return sp.tail.lines()
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

// childSide is what a child generation got from its parent.
type childSide struct {
	link   *link
	stderr *os.File // the service's real stderr, to restore when ready
	hello  hello
}

// joinParent reads the parent's hello. A parent that passed no channel is
// not a handoff generation; that is an error, since the generation number
// would be unknown.
func (u *Upgrader) joinParent() (*childSide, error) {
	f, err := u.tf.File(channelFile)
	if err != nil {
		return nil, err
	}
	if f == nil {
		return nil, errors.New("started by tableflip without a handoff channel")
	}
	l, err := newLink(f)
	if err != nil {
		return nil, err
	}
	m, err := l.recv(10 * time.Second)
	if err != nil || m.Hello == nil {
		l.conn.Close()
		return nil, fmt.Errorf("read hello from parent: %v", err)
	}
	stderr, err := u.tf.File(stderrFile)
	if err != nil {
		l.conn.Close()
		return nil, err
	}
	return &childSide{link: l, stderr: stderr, hello: *m.Hello}, nil
}

// restoreStderr points fd 2 back at the service's stderr, ending the pipe
// through the parent.
func (c *childSide) restoreStderr() error {
	if c.stderr == nil {
		return nil
	}
	defer c.stderr.Close()
	if err := unix.Dup3(int(c.stderr.Fd()), 2, 0); err != nil {
		return fmt.Errorf("restore stderr: %w", err)
	}
	return nil
}
