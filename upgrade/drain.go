package upgrade

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// linger is how long a half-closed idle connection may take to send its
// FIN before it is closed outright. net/http waits as long after a
// response that ends a connection (its rstAvoidanceDelay).
const linger = 500 * time.Millisecond

// drainPoll is how often the drain looks again at idle connections.
const drainPoll = 20 * time.Millisecond

// drain stops every server accepting and ends every connection as gently as
// its state allows, forcing what is left when ctx ends. It is the drain
// described in DESIGN.md, "The drain that drops nothing".
func (u *Upgrader) drain(ctx context.Context, reason string) DrainRecord {
	start := time.Now()
	u.mu.Lock()
	servers := append([]*served(nil), u.servers...)
	u.mu.Unlock()

	// Stop accepting. The socket and its accept queue live on in the next
	// generation, if there is one, so nothing queued is reset.
	for _, s := range servers {
		s.stopped.Store(true)
		s.ln.Close()
	}
	var atStart int64
	for _, s := range servers {
		s.t.mu.Lock()
		s.t.draining = true
		atStart += int64(len(s.t.conns))
		s.t.mu.Unlock()
	}
	u.draining.Store(true)
	close(u.drainingC)

	deadline, _ := ctx.Deadline()
	u.log.Info().Str("reason", reason).Int64("connections", atStart).
		Int64("in_flight", u.inFlight.Load()).Float64("drain_timeout_ms", ms(time.Until(deadline))).Msg("drain started")

	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.drain(ctx, start, u.opts.IdleGrace, u.opts.CloseSpread)
		}()
	}
	wg.Wait()

	rec := DrainRecord{
		Reason:                reason,
		Gen:                   u.gen,
		PID:                   u.pid,
		StartedAt:             start,
		Duration:              Duration(time.Since(start)),
		ConnectionsAtStart:    atStart,
		RequestsWhileDraining: u.drainRequests.Load(),
	}
	for _, s := range servers {
		s.t.mu.Lock()
		rec.Closed.add(s.t.closed)
		s.t.mu.Unlock()
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
		Int64("closed_hijacked", rec.Closed.Hijacked).
		Int64("force_closed", rec.Closed.Forced).
		Msg("drain finished")
	return rec
}

// drain ends the connections of one server. The listener is closed already.
//
// HTTP/1 connections that are busy finish their request and close after it
// (the response carries Connection: close). Idle ones are left alone while
// they went idle less than grace ago, since a request may be on its way; the
// rest are half-closed at moments spread over spread, so a crowd of clients
// does not reconnect at once. Only when no idle HTTP/1 connection remains is
// http.Server.Shutdown called: it would close idle connections at once,
// under a client that may be writing to them, but now it only sends GOAWAY
// to HTTP/2 connections and waits for the busy ones.
func (s *served) drain(ctx context.Context, start time.Time, grace, spread time.Duration) {
	// An Accept under way when the listener closed may still deliver a
	// connection. Once the Serve loop has returned, every connection it
	// accepted is tracked.
	select {
	case <-s.done:
	case <-ctx.Done():
		s.force()
		return
	}
	if !s.waitWhile(ctx, func() bool { return s.reapIdle(time.Now(), start, grace, spread) }) {
		return
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		s.force()
		return
	}
	// Shutdown does not wait for hijacked connections (WebSocket); their
	// handlers end them once they learn the drain began.
	s.waitWhile(ctx, func() bool { return s.t.count() > 0 })
}

// waitWhile calls cond again every drainPoll and at every close until it
// returns false. If ctx ends first it forces what is left and returns false.
func (s *served) waitWhile(ctx context.Context, cond func() bool) bool {
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
func (s *served) reapIdle(now, start time.Time, grace, spread time.Duration) bool {
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
func (s *served) force() {
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
