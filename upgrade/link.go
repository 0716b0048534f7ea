package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A link is one end of the channel between a generation and the process
// that started it: the previous generation, or the supervisor. It is a
// SOCK_SEQPACKET socketpair, so every message arrives whole and alone,
// with the file descriptors sent along with it (a supervised generation
// hands the supervisor the sockets it binds).
//
// Messages are JSON. Which types go which way:
//
//	hello          up → new     generation number, sockets, counters
//	joined         new → up     the new process runs (its pid)
//	adopt          gen → sup    a socket the generation bound, to keep (one fd)
//	state_request  new → up     asks for the state of the serving generation
//	state          up → new     a chunk of that state (More until the last)
//	ready          new → up     every step that can fail has succeeded
//	commit, abort  up → new     the answer to ready: take over, or leave
//	failed         new → up     it gives up before the commit (Reason)
//	drain          sup → gen    handed over: drain and exit
//	stop           up → gen     stop the service gracefully
//	stopping       gen → sup    the generation stops the service
//	upgrade        gen → up     an upgrade request (ID); also old → new after a handoff
//	upgrade_result sup → gen    its outcome (ID)
//	drained        old → up/new the drain record of a generation that handed over
//	supervisor     sup → gen    the supervisor's pid and version, after it re-executed
type message struct {
	Type string `json:"type"`
	// ID matches an upgrade request to its result.
	ID         uint64          `json:"id,omitempty"`
	Hello      *hello          `json:"hello,omitempty"`
	PID        int             `json:"pid,omitempty"`
	Key        string          `json:"key,omitempty"`
	Data       []byte          `json:"data,omitempty"`
	More       bool            `json:"more,omitempty"`
	Ready      *report         `json:"ready,omitempty"`
	Reason     string          `json:"reason,omitempty"`
	Source     string          `json:"source,omitempty"`
	Result     *Result         `json:"result,omitempty"`
	Failure    *wireError      `json:"failure,omitempty"`
	Drain      *DrainRecord    `json:"drain,omitempty"`
	Supervisor *SupervisorInfo `json:"supervisor,omitempty"`
}

// Message types.
const (
	msgHello         = "hello"
	msgJoined        = "joined"
	msgAdopt         = "adopt"
	msgStateRequest  = "state_request"
	msgState         = "state"
	msgReady         = "ready"
	msgCommit        = "commit"
	msgAbort         = "abort"
	msgFailed        = "failed"
	msgDrain         = "drain"
	msgStop          = "stop"
	msgStopping      = "stopping"
	msgUpgrade       = "upgrade"
	msgUpgradeResult = "upgrade_result"
	msgDrained       = "drained"
	msgSupervisor    = "supervisor"
)

// maxMessage bounds one message. State larger than stateChunk travels in
// several.
const (
	maxMessage = 256 << 10
	stateChunk = 96 << 10
	maxFDs     = 16
)

// hello is what a new generation is told by the process that starts it.
type hello struct {
	Generation  int           `json:"generation"`
	ParentPID   int           `json:"parent_pid"`
	Source      string        `json:"source"`
	RequestedAt time.Time     `json:"requested_at"`
	Upgrades    UpgradeCounts `json:"upgrades"`
	// Listeners are the sockets passed, as "network address" keys. A
	// supervisor passes them as extra files; FDs gives each one's number.
	Listeners []string `json:"listeners"`
	FDs       []int    `json:"fds,omitempty"`
	// StderrFD is the service's own stderr, passed by a supervisor.
	StderrFD   int             `json:"stderr_fd,omitempty"`
	LastDrain  *DrainRecord    `json:"last_drain,omitempty"`
	Supervisor *SupervisorInfo `json:"supervisor,omitempty"`
}

// report is what a new generation says when it is ready.
type report struct {
	PID        int    `json:"pid"`
	Version    string `json:"version"`
	Generation int    `json:"generation"`
	// Used are the keys of the inherited sockets it took; the rest are
	// closed once it has taken over.
	Used []string `json:"used,omitempty"`
	// DrainTimeout and ShutdownDelay tell a supervisor how long this
	// generation may take to stop.
	DrainTimeout  time.Duration `json:"drain_timeout,omitempty"`
	ShutdownDelay time.Duration `json:"shutdown_delay,omitempty"`
}

// wireError is an *UpgradeError, or a plain error, on the wire.
type wireError struct {
	Msg      string   `json:"msg"`
	Kind     string   `json:"kind,omitempty"` // "in_progress", "stopping", "upgrade"
	ChildPID int      `json:"child_pid,omitempty"`
	Exit     string   `json:"exit,omitempty"`
	TimedOut bool     `json:"timed_out,omitempty"`
	Stderr   []string `json:"stderr,omitempty"`
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Msg: err.Error()}
	var ue *UpgradeError
	switch {
	case errors.Is(err, ErrUpgradeInProgress):
		w.Kind = "in_progress"
	case errors.Is(err, ErrStopping):
		w.Kind = "stopping"
	case errors.As(err, &ue):
		w.Kind = "upgrade"
		w.ChildPID, w.Exit, w.TimedOut, w.Stderr = ue.ChildPID, ue.Exit, ue.TimedOut, ue.Stderr
		if ue.Err != nil {
			w.Msg = ue.Err.Error()
		}
	}
	return w
}

func (w *wireError) err() error {
	switch w.Kind {
	case "in_progress":
		return ErrUpgradeInProgress
	case "stopping":
		return ErrStopping
	case "upgrade":
		return &UpgradeError{ChildPID: w.ChildPID, Exit: w.Exit, TimedOut: w.TimedOut, Stderr: w.Stderr, Err: errors.New(w.Msg)}
	}
	return errors.New(w.Msg)
}

// inbound is a message read from a link, with the files it carried, or
// the error that ended the link.
type inbound struct {
	msg   message
	files []*os.File
	err   error
}

type link struct {
	conn *net.UnixConn
	wmu  sync.Mutex
	// in delivers what the reader goroutine reads; it is closed when the
	// link ends, after an inbound carrying the error.
	in   chan inbound
	done chan struct{} // closed when the reader has returned
}

// newLinkPair makes a connected pair of links' sockets: mine, and the
// other end as a file to pass to another process.
func newLinkPair() (mine *link, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	theirs = os.NewFile(uintptr(fds[1]), "handoff-link")
	mine, err = linkFromFile(os.NewFile(uintptr(fds[0]), "handoff-link"))
	if err != nil {
		theirs.Close()
		return nil, nil, err
	}
	return mine, theirs, nil
}

// linkFromFile makes a link of f, which it closes (the link holds its own
// copy), and starts its reader.
func linkFromFile(f *os.File) (*link, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("link: %T is not a unix socket", c)
	}
	l := &link{conn: uc, in: make(chan inbound, 16), done: make(chan struct{})}
	go l.read() // ends when the link is closed or the peer goes away
	return l, nil
}

// send writes one message, with files, within timeout.
func (l *link) send(m message, timeout time.Duration, files ...*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("link: %s message of %d bytes is over the limit of %d", m.Type, len(b), maxMessage)
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			if fds[i], err = rawFD(f); err != nil {
				return fmt.Errorf("link: send %s: %w", m.Type, err)
			}
		}
		oob = unix.UnixRights(fds...)
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, _, err = l.conn.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("link: send %s: %w", m.Type, err)
	}
	return nil
}

func (l *link) read() {
	defer close(l.done)
	defer close(l.in)
	buf := make([]byte, maxMessage+1)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		n, oobn, flags, _, err := l.conn.ReadMsgUnix(buf, oob)
		var files []*os.File
		if oobn > 0 {
			files = parseRights(oob[:oobn])
		}
		if err == nil && n == 0 {
			err = errLinkClosed // a zero-length read on SOCK_SEQPACKET is the peer's close
		}
		if err != nil {
			closeFiles(files)
			l.in <- inbound{err: err}
			return
		}
		if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			closeFiles(files)
			l.in <- inbound{err: errors.New("link: message truncated")}
			return
		}
		var m message
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			closeFiles(files)
			l.in <- inbound{err: fmt.Errorf("link: bad message: %w", err)}
			return
		}
		l.in <- inbound{msg: m, files: files}
	}
}

// rawFD returns f's descriptor without the side effect of f.Fd(), which
// puts it in blocking mode: a socket's mode is shared by every copy of it,
// the listener that accepts on it included, and a blocking accept cannot be
// interrupted by Close.
func rawFD(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

var errLinkClosed = errors.New("link closed by the other process")

func parseRights(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "handoff-passed"))
		}
	}
	return files
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// close ends the link and waits for its reader, whose pending messages
// are dropped (and their files closed).
func (l *link) close() {
	l.conn.Close()
	for in := range l.in {
		closeFiles(in.files)
	}
	<-l.done
}

// recvType waits for the next message of one of the types, dropping
// others, for as long as timeout (zero: no limit). A link that ends
// returns its error.
func (l *link) recvType(timeout time.Duration, types ...string) (message, []*os.File, error) {
	var tc <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		tc = t.C
	}
	for {
		select {
		case in, ok := <-l.in:
			if !ok {
				return message{}, nil, errLinkClosed
			}
			if in.err != nil {
				return message{}, nil, in.err
			}
			for _, t := range types {
				if in.msg.Type == t {
					return in.msg, in.files, nil
				}
			}
			closeFiles(in.files)
		case <-tc:
			return message{}, nil, fmt.Errorf("link: no %v message within %v", types, timeout)
		}
	}
}

// sendState sends state in chunks, the last one with More unset.
func (l *link) sendState(state []byte, failure error) error {
	if failure != nil {
		return l.send(message{Type: msgState, Reason: failure.Error()}, 5*time.Second)
	}
	for {
		n := min(len(state), stateChunk)
		m := message{Type: msgState, Data: state[:n], More: n < len(state)}
		if err := l.send(m, 5*time.Second); err != nil {
			return err
		}
		state = state[n:]
		if !m.More {
			return nil
		}
	}
}

// maxState bounds the state one generation hands the next.
const maxState = 256 << 20
