// Package lineproto is a line protocol over TCP, and the upgrade.Server
// that serves it: the raw TCP example of package upgrade and the
// reference server's -tcp-addr share it.
//
// The protocol: each line a client sends is one message, and the server
// answers each with one line, in order. When the server drains, each
// connection answers every message it has begun to read (the one it is
// handling, and any whose first bytes it has read), sends the line
// RECONNECT in place of the next answer, half-closes, and closes once the
// client has closed its end. A client that reads RECONNECT connects again (to the next
// generation) and sends again every message it has had no answer to. A
// message the server handled is answered before RECONNECT, and one it
// did not answer it did not handle, so across a restart no message is
// lost and none is handled twice.
package lineproto

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff/upgrade"
)

// Reconnect is the line a draining server sends in place of an answer.
const Reconnect = "RECONNECT"

// MaxLineLen is the longest message, in bytes without its newline. A
// longer one is answered "ERROR line too long" and the connection closed.
const MaxLineLen = 64 << 10

// linger is how long a connection that said goodbye waits for its client
// to close first, reading and dropping what the client sent meanwhile
// (unanswered, so the client sends it again). Closing a socket with
// unread input sends a reset, which could wipe the RECONNECT line before
// the client reads it.
const linger = time.Second

// Server serves the line protocol: each message to Handle, each answer
// back. It is an upgrade.Server. Use it with one Upgrader only.
type Server struct {
	handle func(line string) string

	wg       sync.WaitGroup // connection goroutines
	requests atomic.Int64
	inFlight atomic.Int64

	mu    sync.Mutex
	conns map[*conn]struct{}
	// counting: closes are counted. The Upgrader closes the listener as
	// the drain begins, so it is set when Serve returns, a little before
	// Drain is called.
	counting bool
	draining bool // Drain has woken every connection
	forcing  bool
	closed   upgrade.CloseCounts
	changed  chan struct{} // receives a value, without blocking, on every close
}

// NewServer returns a Server that answers each message (a line without
// its newline) with handle's result, which must not contain a newline.
// handle is called from one goroutine per connection.
func NewServer(handle func(line string) string) *Server {
	return &Server{handle: handle, conns: map[*conn]struct{}{}, changed: make(chan struct{}, 1)}
}

// halfCloser is a connection that can be half-closed: TCP or a unix
// stream socket.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

type conn struct {
	halfCloser
	saidGoodbye bool // guarded by Server.mu
}

// Serve accepts connections on ln, a TCP or unix stream listener, until it
// is closed.
func (s *Server) Serve(ln net.Listener) error {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			// Out of file descriptors and the like: wait and try again,
			// as net/http does.
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			s.mu.Lock()
			s.counting = true
			s.mu.Unlock()
			return err
		}
		delay = 0
		hc, ok := nc.(halfCloser)
		if !ok {
			nc.Close()
			return fmt.Errorf("lineproto: a %T cannot be half-closed; serve TCP or a unix stream socket", nc)
		}
		c := &conn{halfCloser: hc}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() { // ends when the connection does
			defer s.wg.Done()
			s.serveConn(c)
		}()
	}
}

func (s *Server) serveConn(c *conn) {
	defer s.close(c)
	r := bufio.NewReader(c)
	var msg []byte
	for {
		part, err := r.ReadSlice('\n')
		msg = append(msg, part...)
		if n := len(msg); n > MaxLineLen && (err != nil || n-1 > MaxLineLen) {
			io.WriteString(c, "ERROR line too long\n")
			return
		}
		switch {
		case err == nil:
			if !s.answer(c, msg) {
				return
			}
			msg = msg[:0]
			if !s.isDraining() {
				break
			}
			if r.Buffered() == 0 {
				s.goodbye(c)
				return
			}
			// Bytes of the next message are in hand already: answer it
			// too, but read nothing the client sent after it.
			c.SetReadDeadline(time.Unix(1, 0))
		case errors.Is(err, bufio.ErrBufferFull):
			// A long message: read on.
		case errors.Is(err, os.ErrDeadlineExceeded) && s.isDraining():
			// The drain woke this read, or stopped it after a message.
			// Between messages, say goodbye; in the middle of one, read
			// the rest of it first (the drain deadline bounds the wait).
			if len(msg) == 0 {
				s.goodbye(c)
				return
			}
			c.SetReadDeadline(time.Time{})
		default:
			return // the client closed its end, or the connection failed
		}
	}
}

// answer handles the message msg (with its newline) and writes the
// answer; false means the connection failed.
func (s *Server) answer(c *conn, msg []byte) bool {
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	line := strings.TrimSuffix(strings.TrimSuffix(string(msg), "\n"), "\r")
	_, err := io.WriteString(c, s.handle(line)+"\n")
	s.requests.Add(1)
	return err == nil
}

// goodbye tells the client to reconnect, half-closes, and waits for the
// client's end to close, for at most linger.
func (s *Server) goodbye(c *conn) {
	c.SetWriteDeadline(time.Now().Add(linger))
	if _, err := io.WriteString(c, Reconnect+"\n"); err != nil {
		return
	}
	s.mu.Lock()
	c.saidGoodbye = true
	s.mu.Unlock()
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(linger))
	io.Copy(io.Discard, c)
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// close closes c and counts how it ended, if the drain has begun.
func (s *Server) close(c *conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	if s.counting {
		switch {
		case s.forcing:
			s.closed.Forced++
		case c.saidGoodbye:
			s.closed.AfterResponse++
		default:
			s.closed.ByPeer++
		}
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Drain wakes every connection waiting for its next message, which then
// says goodbye, and waits for them all to end; a connection in the middle
// of a message says goodbye after answering it. When ctx ends it closes
// what is left.
func (s *Server) Drain(ctx context.Context) upgrade.CloseCounts {
	// Under s.mu, so that a connection that sees the drain has begun has
	// been woken already: its own deadlines then stand.
	s.mu.Lock()
	s.counting, s.draining = true, true
	for c := range s.conns {
		c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-s.changed:
			continue
		case <-ctx.Done():
		}
		s.mu.Lock()
		s.forcing = true
		for c := range s.conns {
			c.Close() // the goroutine serving it counts it
		}
		s.mu.Unlock()
		break
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Stats counts messages and connections.
func (s *Server) Stats() upgrade.ServerStats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	return upgrade.ServerStats{Requests: s.requests.Load(), InFlight: s.inFlight.Load(), Connections: int64(n)}
}
