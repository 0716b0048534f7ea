package upgrade

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// h2Preface starts every HTTP/2 connection with prior knowledge (h2c).
var h2Preface = []byte("PRI * HTTP/2.0\r\n")

// tracker knows every connection one http.Server holds: its state, since
// when, and whether it speaks HTTP/2. The drain reads it to decide which
// connections may be closed and which must be left to finish.
type tracker struct {
	log      zerolog.Logger
	logConns bool
	mu       sync.Mutex
	conns    map[*trackedConn]struct{}
	nextID   uint64
	changed  chan struct{} // receives a value, without blocking, on every close
	// draining and forcing decide how a close is counted.
	draining bool
	forcing  bool
	closed   CloseCounts
}

func newTracker(log zerolog.Logger, logConns bool) *tracker {
	return &tracker{
		log:      log,
		logConns: logConns,
		conns:    make(map[*trackedConn]struct{}),
		changed:  make(chan struct{}, 1),
	}
}

// trackedConn is a net.Conn the tracker knows. Fields after the embedded
// Conn are guarded by tracker.mu, except where noted.
type trackedConn struct {
	net.Conn
	t  *tracker
	id uint64

	state     http.ConnState
	since     time.Time // when state last changed
	h2        bool
	h2w       *h2Conn   // the HTTP/2 connection over it, for the two-step close; nil for others
	reaping   bool      // the drain half-closed it
	reapedAt  time.Time // when it did
	untracked bool
	// inHandler counts requests of this connection inside the handler.
	inHandler int
	// openResponse: a response header went out without Connection: close
	// (before the drain began) and its handler has not returned, so the
	// connection would be kept alive after it.
	openResponse bool
	// spare is a drainWriter no handler uses, kept for the next request so
	// that a request allocates none: net/http forbids using a
	// ResponseWriter after its handler returned, and one writer serves
	// every request of an HTTP/1 connection, one after another (HTTP/2
	// streams that overlap take new ones).
	spare *drainWriter

	sniffed atomic.Bool // the first bytes were checked for the h2c preface
	sniff   []byte      // bytes read before the check; only the reader uses it
}

// trackedListener hands out tracked connections.
type trackedListener struct {
	net.Listener
	t *tracker
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.t.logConns {
		l.t.log.Debug().Str("remote_addr", c.RemoteAddr().String()).Str("local_addr", c.LocalAddr().String()).Msg("connection accepted")
	}
	return l.t.add(c), nil
}

func (t *tracker) add(c net.Conn) *trackedConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nextID++
	tc := &trackedConn{Conn: c, t: t, id: t.nextID, state: http.StateNew, since: time.Now()}
	t.conns[tc] = struct{}{}
	return tc
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.sniffed.Load() && n > 0 {
		c.sniffPreface(p[:n])
	}
	return n, err
}

// sniffPreface marks the connection as HTTP/2 when its first bytes are the
// h2c preface. Reads on one connection never overlap, so sniff needs no lock.
func (c *trackedConn) sniffPreface(b []byte) {
	c.sniff = append(c.sniff, b...)
	if len(c.sniff) < len(h2Preface) && bytes.HasPrefix(h2Preface, c.sniff) {
		return // a prefix of the preface so far: read more before deciding
	}
	if bytes.HasPrefix(c.sniff, h2Preface) {
		c.t.mu.Lock()
		c.h2 = true
		c.t.mu.Unlock()
	}
	c.sniff = nil
	c.sniffed.Store(true)
}

// NetConn returns the connection the listener accepted, as tls.Conn's
// method of the same name does: a ConnContext hook reads peer credentials
// of a unix socket through it.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, as net/http does after a response
// that ends the connection.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *trackedConn) Close() error {
	c.t.remove(c)
	return c.Conn.Close()
}

// remove forgets c and counts how it was closed, once.
func (t *tracker) remove(c *trackedConn) {
	t.mu.Lock()
	if c.untracked {
		t.mu.Unlock()
		return
	}
	c.untracked = true
	delete(t.conns, c)
	if t.draining {
		switch {
		case t.forcing:
			t.closed.Forced++
		case c.reaping:
			t.closed.Idle++
		case c.h2:
			t.closed.HTTP2++
			if c.h2w != nil {
				if ended, between := c.h2w.twoStep(); ended {
					t.closed.HTTP2TwoStep++
					t.closed.StreamsBetweenGoaways += between
				}
			}
		case c.state == http.StateHijacked:
			t.closed.Hijacked++
		case c.state == http.StateActive:
			t.closed.AfterResponse++
		default:
			t.closed.ByPeer++
		}
	}
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// connState is the http.Server.ConnState hook.
func (t *tracker) connState(nc net.Conn, st http.ConnState) {
	tc, tlsConn := unwrapConn(nc)
	if tc == nil {
		return
	}
	h2 := false
	if tlsConn != nil && (st == http.StateActive || st == http.StateIdle) {
		h2 = tlsConn.ConnectionState().NegotiatedProtocol == "h2"
	}
	// Only when a connection went idle matters (the drain's idle grace; a
	// new one was stamped when accepted): one clock read per request.
	var now time.Time
	if st == http.StateIdle {
		now = time.Now()
	}
	t.mu.Lock()
	if !tc.untracked {
		tc.state = st
		if st == http.StateIdle {
			tc.since = now
		}
		tc.h2 = tc.h2 || h2
	}
	t.mu.Unlock()
	if st == http.StateClosed {
		t.remove(tc)
	}
}

func unwrapConn(nc net.Conn) (*trackedConn, *tls.Conn) {
	switch c := nc.(type) {
	case *trackedConn:
		return c, nil
	case *tls.Conn:
		tc, _ := c.NetConn().(*trackedConn)
		return tc, c
	}
	return nil, nil
}

// connKey is the request context key of the *trackedConn a request came on.
type connKey struct{}

// connContext is the http.Server.ConnContext hook: it makes the tracked
// connection known to the handler middleware.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	if tc, _ := unwrapConn(nc); tc != nil {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

// enter and leave bracket a request in the handler. enter returns the
// drainWriter for w, the connection's spare one when it has one; leave
// takes it back.
func (t *tracker) enter(c *trackedConn, w http.ResponseWriter) *drainWriter {
	var dw *drainWriter
	if c != nil {
		t.mu.Lock()
		c.inHandler++
		dw, c.spare = c.spare, nil
		t.mu.Unlock()
	}
	if dw == nil {
		dw = &drainWriter{t: t, c: c}
	}
	dw.ResponseWriter, dw.wrote = w, false
	return dw
}

func (t *tracker) leave(c *trackedConn, dw *drainWriter) {
	if c == nil {
		return
	}
	dw.ResponseWriter = nil
	t.mu.Lock()
	c.inHandler--
	c.openResponse = false
	if c.spare == nil {
		c.spare = dw
	}
	t.mu.Unlock()
}

// responseStarts is called as a response header is written, and reports
// whether it must end the connection: it must once the drain has begun.
// closes says the handler already ends the connection with this response.
// Deciding under t.mu orders it with the drain's start.
func (t *tracker) responseStarts(c *trackedConn, closes bool) (closeConn bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		// The two-step close ends an HTTP/2 connection; net/http would turn
		// Connection: close into its own single GOAWAY at once.
		return c == nil || c.h2w == nil
	}
	if c != nil && !closes {
		c.openResponse = true
	}
	return false
}

func (t *tracker) count() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int64(len(t.conns))
}
