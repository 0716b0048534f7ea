package upgrade

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// linger is how long a half-closed idle connection may take to send its
// FIN before it is closed outright. net/http waits as long after a
// response that ends a connection (its rstAvoidanceDelay).
const linger = 500 * time.Millisecond

// drainPoll is how often the drain looks again at idle connections.
const drainPoll = 20 * time.Millisecond

// httpServer is the Server of an *http.Server, with the drain that drops
// nothing (DESIGN.md).
type httpServer struct {
	srv   *http.Server
	t     *tracker
	hooks serverHooks

	requests  atomic.Int64
	inFlight  atomic.Int64
	drainReqs atomic.Int64
	draining  atomic.Bool
}

// HTTP returns the Server of srv. It wraps srv.Handler, srv.ConnState and
// srv.ConnContext so that the drain can track every connection and end
// each one cleanly: an HTTP/1 connection after a response that carries
// Connection: close, or once idle for longer than Options.IdleGrace; an
// HTTP/2 connection with the two-step GOAWAY of RFC 9113 §6.8, so that no
// stream in flight is refused. For that it serves HTTP/2 (over TLS, and
// h2c when srv.Protocols enables it) through golang.org/x/net/http2's
// server, with srv's settings, from functions it puts in srv.TLSNextProto;
// a srv whose TLSNextProto already has "h2" keeps its own HTTP/2 server and
// net/http's single GOAWAY. When srv.TLSConfig is set it serves TLS (with
// HTTP/2) using its certificates. Use srv with one Upgrader only.
func HTTP(srv *http.Server) Server {
	return &httpServer{srv: srv}
}

func (s *httpServer) hook(hooks serverHooks) {
	s.hooks = hooks
	s.t = newTracker(hooks.log, hooks.logConns)
	srv := s.srv
	prevState := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		if w, ok := c.(interface{ origConn() net.Conn }); ok {
			c = w.origConn() // an HTTP/2 connection of the two-step close
		}
		s.t.connState(c, st)
		if prevState != nil {
			prevState(c, st)
		}
	}
	prevCtx := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prevCtx != nil {
			ctx = prevCtx(ctx, c)
		}
		return connContext(ctx, c)
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = s.track(h)
}

func (s *httpServer) Serve(ln net.Listener) error {
	tl := &trackedListener{Listener: ln, t: s.t}
	useTLS := s.srv.TLSConfig != nil
	if err := s.configureHTTP2(useTLS); err != nil {
		return fmt.Errorf("configure HTTP/2: %w", err)
	}
	if useTLS {
		return s.srv.ServeTLS(tl, "", "")
	}
	return s.srv.Serve(tl)
}

func (s *httpServer) Stats() ServerStats {
	return ServerStats{Requests: s.requests.Load(), InFlight: s.inFlight.Load(), Connections: s.t.count()}
}

func (s *httpServer) beginDrain() {
	s.t.mu.Lock()
	s.t.draining = true
	h2 := s.t.http2Conns()
	s.t.mu.Unlock()
	s.draining.Store(true)
	for _, w := range h2 {
		w.goAway()
	}
}

func (s *httpServer) drainRequests() int64 { return s.drainReqs.Load() }

// track counts requests and, once the drain has begun, makes every response
// end its connection: HTTP/1 replies carry Connection: close, and net/http
// turns that header into a GOAWAY on HTTP/2.
func (s *httpServer) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		if s.draining.Load() {
			s.drainReqs.Add(1)
		}
		c, _ := r.Context().Value(connKey{}).(*trackedConn)
		dw := s.t.enter(c, w)
		defer s.t.leave(c, dw)
		h.ServeHTTP(dw, r)
	})
}

// drainWriter adds Connection: close to a response whose header is written
// after the drain began, including responses to requests that were already
// in flight when it began.
type drainWriter struct {
	http.ResponseWriter
	t     *tracker
	c     *trackedConn // nil for a connection the tracker does not know
	wrote bool
}

func (w *drainWriter) WriteHeader(code int) {
	// 1xx responses come before the real one; 101 hands the connection to
	// another protocol, whose Connection: Upgrade must stand.
	if !w.wrote && code >= 200 {
		w.wrote = true
		closes := strings.EqualFold(w.Header().Get("Connection"), "close")
		if w.t.responseStarts(w.c, closes) && !closes {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *drainWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// FlushError is what http.ResponseController calls; flushing first writes
// the header, so it passes through WriteHeader like Write does.
func (w *drainWriter) FlushError() error {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *drainWriter) Flush() { _ = w.FlushError() }

// Unwrap lets http.ResponseController and WebSocket libraries reach the
// connection's own writer (Hijack, deadlines).
func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Drain ends the connections of the server. Its listener is closed and its
// Serve loop has returned.
//
// HTTP/1 connections that are busy finish their request and close after it
// (the response carries Connection: close). Idle ones are left alone while
// they went idle less than the idle grace ago, since a request may be on its
// way; the rest are half-closed at moments spread over the close spread, so
// a crowd of clients does not reconnect at once. HTTP/2 connections got
// the first step of the two-step close when the drain began (h2conn.go).
// Only when no idle HTTP/1 connection remains, and every HTTP/2 client
// acknowledged the PING of the first step (or the GoAwayAckTimeout
// passed), is http.Server.Shutdown called: it would close idle connections
// at once, under a client that may be writing to them, but now it only
// sends HTTP/2 connections their final GOAWAY and waits for the busy ones.
func (s *httpServer) Drain(ctx context.Context) CloseCounts {
	start := time.Now()
	grace, spread := s.hooks.idleGrace, s.hooks.closeSpread
	unsettled := func() bool {
		now := time.Now()
		busy := s.reapIdle(now, start, grace, spread)
		return s.t.awaitingAck(now, s.hooks.ackWait) || busy
	}
	if s.waitWhile(ctx, unsettled) {
		if err := s.srv.Shutdown(ctx); err != nil {
			s.force()
		} else {
			// Shutdown does not wait for hijacked connections (WebSocket);
			// their handlers end them once they learn the drain began.
			s.waitWhile(ctx, func() bool { return s.t.count() > 0 })
		}
	}
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	return s.t.closed
}

// waitWhile calls cond again every drainPoll and at every close until it
// returns false. If ctx ends first it forces what is left and returns false.
func (s *httpServer) waitWhile(ctx context.Context, cond func() bool) bool {
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	for cond() {
		select {
		case <-ctx.Done():
			s.force()
			return false
		case <-tick.C:
		case <-s.t.changed:
		}
	}
	return true
}

// reapIdle half-closes the idle HTTP/1 connections that are due, closes
// those that lingered long enough, and reports whether any HTTP/1
// connection is not yet settled.
//
// net/http drops, unanswered, a request it reads after Shutdown began
// (conn.serve checks shuttingDown right after readRequest). So an HTTP/1
// connection is settled only once it is inside a handler whose response
// ends the connection: idle and new connections, requests between being
// read and reaching the handler, and responses that began before the drain
// without Connection: close must all come to an end first.
func (s *httpServer) reapIdle(now, start time.Time, grace, spread time.Duration) bool {
	var halfClose, closeNow []*trackedConn
	left := false
	s.t.mu.Lock()
	for c := range s.t.conns {
		if c.h2 || c.state == http.StateHijacked {
			continue
		}
		if c.state == http.StateActive {
			if c.inHandler == 0 || c.openResponse {
				left = true // busy; it will be idle, closed, or settled soon
			}
			continue
		}
		left = true
		if c.reaping {
			if now.Sub(c.reapedAt) >= linger {
				closeNow = append(closeNow, c)
			}
			continue
		}
		due := c.since.Add(grace)
		if due.Before(start) {
			due = start
		}
		if now.Before(due.Add(spreadOffset(c.id, spread))) {
			continue
		}
		c.reaping = true
		c.reapedAt = now
		halfClose = append(halfClose, c)
	}
	s.t.mu.Unlock()
	// A FIN, not a close: the client reads EOF and closes its end, and a
	// request it had already sent is not answered with a reset.
	for _, c := range halfClose {
		c.CloseWrite()
	}
	for _, c := range closeNow {
		c.Close()
	}
	return left
}

// force closes whatever is still open on this server.
func (s *httpServer) force() {
	s.t.mu.Lock()
	s.t.forcing = true
	rest := make([]*trackedConn, 0, len(s.t.conns))
	for c := range s.t.conns {
		rest = append(rest, c)
	}
	s.t.mu.Unlock()
	s.srv.Close()
	for _, c := range rest {
		c.Close() // hijacked connections, which Server.Close does not know
	}
}

// spreadOffset places connection id at a fixed, well-mixed point within
// spread, so that idle connections are not all closed at the same moment.
func spreadOffset(id uint64, spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	const slots = 1024
	slot := (id * 2654435761) % slots // Knuth's multiplicative hash
	return time.Duration(uint64(spread) * slot / slots)
}
