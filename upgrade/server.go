package upgrade

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Server is a network server that an Upgrader runs and drains: the
// protocol-neutral half of a service. HTTP is one implementation, the
// upgradegrpc package another; a raw TCP or UDP server implements it in a
// few lines (see the package examples).
//
// The Upgrader calls Serve in a goroutine of its own. To stop accepting it
// closes the listener, waits for Serve to return, then calls Drain once.
type Server interface {
	// Serve accepts connections on ln and serves them. It returns when ln
	// is closed (its error is then ignored) or fails; a failure of a
	// server that was not told to stop ends the generation.
	Serve(ln net.Listener) error
	// Drain ends the connections Serve accepted as gently as the protocol
	// allows: each finishes what it is doing, and its client is told to
	// reconnect (to the next generation). It returns once all are closed,
	// or, when ctx ends, closes what is left and returns. It reports how
	// the connections ended.
	Drain(ctx context.Context) CloseCounts
}

// PacketServer is a datagram server (UDP, unixgram) an Upgrader runs on a
// socket from ListenPacket. To stop, the Upgrader closes the socket, waits
// for ServePacket to return, then calls Drain, which waits for the
// datagrams being handled. The next generation reads from the same socket,
// so no datagram the kernel accepted is lost; one in the socket's buffer
// when the old generation stops reading is read by the new one.
type PacketServer interface {
	ServePacket(pc net.PacketConn) error
	Drain(ctx context.Context) CloseCounts
}

// Stats is implemented by servers that count their traffic; Status shows
// the counts.
type Stats interface {
	Stats() ServerStats
}

// ServerStats is what a server counts.
type ServerStats struct {
	Requests    int64
	InFlight    int64
	Connections int64
}

// ServeOptions configure one server.
type ServeOptions struct {
	// Name names the server in logs and status. Zero means its address.
	Name string
	// Control marks the operator's control API. It accepts connections
	// only in the serving generation (from the moment this one takes
	// over), so that a generation still starting or in probation never
	// answers a control request, and its traffic is counted apart from
	// the service's.
	Control bool
}

// hooked is implemented by servers that need the Upgrader's settings,
// such as the HTTP drain's idle grace.
type hooked interface {
	hook(h serverHooks)
}

// drainBeginner is implemented by servers that must know the moment the
// drain begins, before Serve has returned: the HTTP server marks every
// response from then on with Connection: close.
type drainBeginner interface {
	beginDrain()
}

// serverHooks is what the Upgrader gives a server that asks.
type serverHooks struct {
	log         zerolog.Logger
	idleGrace   time.Duration
	closeSpread time.Duration
	ackWait     time.Duration // bounds the wait for an HTTP/2 client's PING ACK
	draining    <-chan struct{}
	logConns    bool
}

// serving is one registered server and its socket.
type serving struct {
	name    string
	network string
	addr    string
	control bool
	srv     Server       // nil for a packet server
	psrv    PacketServer // nil for a stream server
	ln      net.Listener
	pc      net.PacketConn
	started atomic.Bool   // Serve was called
	stopped atomic.Bool   // the drain closed the socket; Serve's error is expected
	done    chan struct{} // closed when Serve has returned
}

var errRegistrationClosed = errors.New("upgrade: Listen, Serve and OnCleanup must be called before Ready")

// Serve runs s on ln: at once, so that a new generation shares the
// traffic with the old one while it starts, or, for a Control server,
// from the moment this generation takes over. o may be nil. It must be
// called before Ready; after Ready it returns an error.
func (u *Upgrader) Serve(ln net.Listener, s Server, o *ServeOptions) error {
	return u.register(&serving{srv: s, ln: ln, network: ln.Addr().Network(), addr: ln.Addr().String()}, o)
}

// ServePacket runs s on pc, as Serve does for stream servers.
func (u *Upgrader) ServePacket(pc net.PacketConn, s PacketServer, o *ServeOptions) error {
	return u.register(&serving{psrv: s, pc: pc, network: pc.LocalAddr().Network(), addr: pc.LocalAddr().String()}, o)
}

func (u *Upgrader) register(sv *serving, o *ServeOptions) error {
	if o == nil {
		o = &ServeOptions{}
	}
	sv.name, sv.control, sv.done = o.Name, o.Control, make(chan struct{})
	if sv.name == "" {
		sv.name = sv.addr
	}
	if h, ok := sv.server().(hooked); ok {
		h.hook(serverHooks{
			log:         u.log.With().Str("server", sv.name).Logger(),
			idleGrace:   u.opts.IdleGrace,
			closeSpread: u.opts.CloseSpread,
			ackWait:     u.opts.GoAwayAckTimeout,
			draining:    u.drainingC,
			logConns:    u.opts.LogConnections,
		})
	}
	u.regMu.Lock()
	if u.regClosed {
		u.regMu.Unlock()
		return errRegistrationClosed
	}
	u.servers = append(u.servers, sv)
	u.regMu.Unlock()
	if !sv.control {
		u.startServer(sv)
	}
	return nil
}

func (sv *serving) server() any {
	if sv.srv != nil {
		return sv.srv
	}
	return sv.psrv
}

// startServer runs sv's Serve in a goroutine that ends when the drain
// closes its socket (or the socket fails).
func (u *Upgrader) startServer(sv *serving) {
	if sv.started.Swap(true) {
		return
	}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer close(sv.done)
		var err error
		if sv.srv != nil {
			err = sv.srv.Serve(sv.ln)
		} else {
			err = sv.psrv.ServePacket(sv.pc)
		}
		if sv.stopped.Load() {
			return
		}
		// The socket failed under a server that was not told to stop:
		// nothing is accepted any more, so this generation cannot go on.
		if err == nil {
			err = errors.New("Serve returned before the drain")
		}
		u.log.Error().Err(err).Str("server", sv.name).Str("addr", sv.addr).Msg("serve failed")
		u.fail(err)
	}()
}

// stopAccepting closes sv's socket. The socket and its accept queue live
// on in the next generation, if there is one, so nothing queued is reset.
func (sv *serving) stopAccepting() {
	sv.stopped.Store(true)
	if sv.ln != nil {
		sv.ln.Close()
	} else {
		sv.pc.Close()
	}
}

// drain ends sv's connections. An Accept under way when the socket closed
// may still deliver a connection, so it first waits for Serve to return:
// then every connection Serve accepted is known to the server.
func (sv *serving) drain(ctx context.Context) CloseCounts {
	if !sv.started.Load() {
		return CloseCounts{}
	}
	select {
	case <-sv.done:
	case <-ctx.Done():
	}
	if sv.srv != nil {
		return sv.srv.Drain(ctx)
	}
	return sv.psrv.Drain(ctx)
}

func (sv *serving) status() ServerStatus {
	st := ServerStatus{Name: sv.name, Network: sv.network, Addr: sv.addr, Control: sv.control}
	if s, ok := sv.server().(Stats); ok {
		c := s.Stats()
		st.Requests, st.InFlight, st.Connections = c.Requests, c.InFlight, c.Connections
	}
	return st
}

// drainAll stops every server accepting and drains them together, forcing
// what is left when ctx ends. It is the drain of DESIGN.md, "The drain that
// drops nothing", for every kind of server.
func (u *Upgrader) drainAll(ctx context.Context, reason string) DrainRecord {
	start := time.Now()
	servers := u.registered()
	for _, sv := range servers {
		sv.stopAccepting()
	}
	for _, sv := range servers {
		if b, ok := sv.server().(drainBeginner); ok {
			b.beginDrain()
		}
	}
	close(u.drainingC)
	var atStart, inFlight int64
	for _, sv := range servers {
		st := sv.status()
		atStart += st.Connections
		inFlight += st.InFlight
	}
	deadline, _ := ctx.Deadline()
	u.log.Info().Str("reason", reason).Int64("connections", atStart).Int64("in_flight", inFlight).
		Float64("drain_timeout_ms", ms(time.Until(deadline))).Msg("drain started")

	counts := make([]CloseCounts, len(servers))
	var wg sync.WaitGroup
	for i, sv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i] = sv.drain(ctx)
		}()
	}
	wg.Wait()

	rec := DrainRecord{
		Reason:             reason,
		Gen:                u.gen,
		PID:                u.pid,
		StartedAt:          start,
		Duration:           Duration(time.Since(start)),
		ConnectionsAtStart: atStart,
	}
	for i, c := range counts {
		rec.Closed.add(c)
		if d, ok := servers[i].server().(interface{ drainRequests() int64 }); ok {
			rec.RequestsWhileDraining += d.drainRequests()
		}
	}
	ev := u.log.Info()
	if rec.Closed.Forced > 0 {
		ev = u.log.Warn()
	}
	ev.Str("reason", reason).Float64("duration_ms", ms(time.Duration(rec.Duration))).
		Int64("connections_at_start", atStart).
		Int64("requests_while_draining", rec.RequestsWhileDraining).
		Int64("closed_after_response", rec.Closed.AfterResponse).
		Int64("closed_idle", rec.Closed.Idle).
		Int64("closed_by_peer", rec.Closed.ByPeer).
		Int64("closed_http2", rec.Closed.HTTP2).
		Int64("http2_two_step", rec.Closed.HTTP2TwoStep).
		Int64("streams_between_goaways", rec.Closed.StreamsBetweenGoaways).
		Int64("closed_hijacked", rec.Closed.Hijacked).
		Int64("force_closed", rec.Closed.Forced).
		Msg("drain finished")
	return rec
}

func (u *Upgrader) registered() []*serving {
	u.regMu.Lock()
	defer u.regMu.Unlock()
	return append([]*serving(nil), u.servers...)
}
