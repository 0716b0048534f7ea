// Package upgradegrpc runs a *grpc.Server under an upgrade.Upgrader, so
// that a gRPC service restarts without a failed RPC. It is a package of its
// own so that a service that speaks only HTTP does not link gRPC.
//
// A service registers its grpc.Server with Server and upgrade drives it:
//
//	gs := grpc.NewServer(grpc.StatsHandler(rpcs)) // rpcs is optional
//	ln, err := u.Listen(ctx, "tcp", addr)
//	err = u.Serve(ln, upgradegrpc.Server(gs, &upgradegrpc.Options{RPCs: rpcs}), nil)
//
// The drain is grpc-go's GracefulStop, bounded by the drain deadline: each
// connection gets the two-step GOAWAY of RFC 9113 §6.8, so an RPC the
// client sent before it learned of the GOAWAY is still served, and one it
// sends after goes to a new connection, which the next generation accepts
// on the same socket. What is left at the deadline is cut with Stop and
// counted as forced. Server-streaming RPCs that never end on their own
// (watches, subscriptions) must end when upgrade.Upgrader.Draining is
// closed, with a status that tells the client to call again (such as
// codes.Unavailable): GracefulStop waits for every handler.
//
// Rules: use a grpc.Server with one Upgrader only, and do not call its
// Serve, Stop or GracefulStop yourself; the Upgrader does.
package upgradegrpc

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"google.golang.org/grpc"
)

// handoverWait bounds the drain's wait for grpc-go to take over the
// connections its Serve accepted last (see Drain). It is long only on a
// machine so loaded that a runnable goroutine waits this long for a CPU.
const handoverWait = time.Second

// Options configure the Server of a grpc.Server. The zero value is valid.
type Options struct {
	// RPCs counts RPCs for upgrade's Status, if the grpc.Server was created
	// with grpc.StatsHandler(RPCs). Nil leaves the RPC counts at zero;
	// connections are counted either way.
	RPCs *RPCStats
}

// Server returns the upgrade.Server of s. o may be nil.
func Server(s *grpc.Server, o *Options) upgrade.Server {
	if o == nil {
		o = &Options{}
	}
	return &server{
		s:       s,
		rpcs:    o.RPCs,
		conns:   make(map[*conn]struct{}),
		changed: make(chan struct{}, 1),
	}
}

// server is the upgrade.Server of a grpc.Server. It sees every connection
// through a wrapping listener, which is how it counts how they end.
type server struct {
	s    *grpc.Server
	rpcs *RPCStats

	mu       sync.Mutex
	conns    map[*conn]struct{}
	draining bool // closes from now on are counted (set as Serve returns)
	forcing  bool // closes from now on are forced
	closed   upgrade.CloseCounts
	changed  chan struct{} // receives a value, without blocking, when a connection is closed or taken over
}

// Serve serves s on ln until the Upgrader closes ln. grpc-go's Serve then
// returns the listener's error, which the Upgrader expects and ignores.
func (a *server) Serve(ln net.Listener) error {
	err := a.s.Serve(&listener{Listener: ln, a: a})
	// The Upgrader closes the listener as the drain begins: count the
	// connections that close from now on, not only from Drain.
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
	return err
}

// Stats counts the open connections and, with Options.RPCs, the RPCs.
func (a *server) Stats() upgrade.ServerStats {
	a.mu.Lock()
	st := upgrade.ServerStats{Connections: int64(len(a.conns))}
	a.mu.Unlock()
	if a.rpcs != nil {
		st.Requests, st.InFlight = a.rpcs.started.Load(), a.rpcs.inFlight.Load()
	}
	return st
}

// Drain ends every connection with GracefulStop and waits for it until
// ctx ends; then it cuts what is left with Stop.
//
// grpc-go's Serve hands each accepted connection to a goroutine that drops
// it, unanswered, if GracefulStop has begun by the time it runs. A
// connection accepted just before the Upgrader closed the listener could be
// lost that way, its client told nothing. So Drain first waits until
// grpc-go has taken over every accepted connection: its first act on one it
// keeps is SetDeadline (grpc-go v1.85 handleRawConn), which the wrapping
// connection notes.
func (a *server) Drain(ctx context.Context) upgrade.CloseCounts {
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
	a.waitTakenOver(ctx)

	stopped := make(chan struct{})
	// Returns once every connection has closed and every handler has
	// returned. After Stop, a handler that ignores its context's end can
	// keep it waiting; the drain does not wait for it then.
	go func() {
		a.s.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		a.force()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// waitTakenOver waits until grpc-go has taken over or closed every
// connection it accepted, or ctx ends, or handoverWait passes.
func (a *server) waitTakenOver(ctx context.Context) {
	timer := time.NewTimer(handoverWait)
	defer timer.Stop()
	for {
		a.mu.Lock()
		waiting := 0
		for c := range a.conns {
			if !c.takenOver {
				waiting++
			}
		}
		a.mu.Unlock()
		if waiting == 0 {
			return
		}
		select {
		case <-a.changed:
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		}
	}
}

// force closes every connection still open, those still in the HTTP/2
// handshake included, which grpc-go's Stop would wait for until its
// connection timeout (120 s by default), and then stops s.
func (a *server) force() {
	a.mu.Lock()
	a.forcing = true
	rest := make([]*conn, 0, len(a.conns))
	for c := range a.conns {
		rest = append(rest, c)
	}
	a.mu.Unlock()
	for _, c := range rest {
		c.Close()
	}
	a.s.Stop()
}

func (a *server) add(nc net.Conn) *conn {
	c := &conn{Conn: nc, a: a}
	a.mu.Lock()
	a.conns[c] = struct{}{}
	a.mu.Unlock()
	return c
}

// remove forgets c and counts how it ended, once.
func (a *server) remove(c *conn) {
	a.mu.Lock()
	if _, ok := a.conns[c]; !ok {
		a.mu.Unlock()
		return
	}
	delete(a.conns, c)
	if a.draining {
		if a.forcing {
			a.closed.Forced++
		} else {
			// GracefulStop ends every connection with the two-step
			// GOAWAY; a connection its client closed first is counted
			// here too, as net/http's HTTP/2 connections are.
			a.closed.HTTP2++
		}
	}
	a.mu.Unlock()
	a.signal()
}

func (a *server) signal() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// listener hands grpc-go tracked connections.
type listener struct {
	net.Listener
	a *server
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.a.add(c), nil
}

// conn is a connection the server tracks. takenOver is guarded by the
// server's mu.
type conn struct {
	net.Conn
	a         *server
	takenOver bool
}

func (c *conn) SetDeadline(t time.Time) error {
	c.a.mu.Lock()
	first := !c.takenOver
	c.takenOver = true
	c.a.mu.Unlock()
	if first {
		c.a.signal()
	}
	return c.Conn.SetDeadline(t)
}

func (c *conn) Close() error {
	c.a.remove(c)
	return c.Conn.Close()
}
