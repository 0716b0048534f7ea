// The x/net HTTP/2 server API is deprecated in favour of http.Server's
// own HTTP/2 (Protocols), which has no hook for the two-step close; it is
// used here on purpose, and only here.
//lint:file-ignore SA1019 see above

package upgrade

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"time"

	"golang.org/x/net/http2"
)

// configureHTTP2 makes srv serve HTTP/2 through x/net's http2.Server on
// h2Conns, so that the drain can close each connection in two steps. It
// leaves srv alone when it would not serve HTTP/2 (over TLS when useTLS, else
// h2c), or already has an HTTP/2 server of its own in TLSNextProto: those
// connections get net/http's single GOAWAY.
func (s *httpServer) configureHTTP2(useTLS bool) error {
	srv := s.srv
	if !twoStepGoAway || !servesHTTP2(srv, useTLS) {
		return nil
	}
	h2 := &http2.Server{}
	hadTLSConfig := srv.TLSConfig != nil
	// ConfigureServer also registers the graceful shutdown of every
	// connection that h2.ServeConn serves with srv.RegisterOnShutdown: that
	// is how Shutdown's GOAWAY, the final one, reaches them.
	if err := http2.ConfigureServer(srv, h2); err != nil {
		return err
	}
	if !hadTLSConfig {
		srv.TLSConfig = nil // set for ALPN, which a plaintext server does not use
	}
	srv.TLSNextProto["h2"] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		tc, _ := c.NetConn().(*trackedConn)
		s.serveHTTP2(h2, hs, c, c, tc, h)
	}
	// net/http hands over an h2c connection, once it has read the client
	// preface, as a *tls.Conn that holds it unencrypted; x/net's own
	// function of this name unwraps it the same way.
	srv.TLSNextProto[nextProtoUnencryptedHTTP2] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		u, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok { // not what net/http 1.24 to 1.26 hands over
			s.hooks.log.Warn().Msg("h2c connection handed over in an unknown form; closing it")
			c.Close()
			return
		}
		nc := u.UnencryptedNetConn()
		tc, _ := nc.(*trackedConn)
		s.serveHTTP2(h2, hs, nc, nil, tc, h)
	}
	return nil
}

// nextProtoUnencryptedHTTP2 is the TLSNextProto key under which net/http
// hands over h2c connections (Go 1.24+).
const nextProtoUnencryptedHTTP2 = "unencrypted_http2"

// servesHTTP2 reports whether srv would serve HTTP/2 through net/http's
// own server, over TLS when useTLS, else over plaintext with prior
// knowledge (http.Server.protocols and onceSetNextProtoDefaults, Go 1.26).
func servesHTTP2(srv *http.Server, useTLS bool) bool {
	if _, ok := srv.TLSNextProto["h2"]; ok {
		return false // the caller brought an HTTP/2 server
	}
	if srv.Protocols != nil {
		if useTLS {
			return srv.Protocols.HTTP2()
		}
		return srv.Protocols.UnencryptedHTTP2()
	}
	return useTLS && srv.TLSNextProto == nil
}

// serveHTTP2 serves one HTTP/2 connection that net/http handed over: nc,
// the TLS connection tc when it is one, tracked as tracked. It returns when
// the connection is closed. What it passes to ServeConn is what x/net's
// ConfigureServer would: the handler, srv as BaseConfig (timeouts, limits,
// ErrorLog, ConnState) and the connection's base context, which net/http
// offers through a BaseContext method of the handler.
//
// This holds for x/net's own server, which it builds with Go 1.26. Built
// with Go 1.27, x/net/http2 (v0.62.0) wraps net/http's server instead, and
// ServeConn with a BaseConfig serves on a copy of srv that Shutdown does
// not reach: TestDrainHTTP2TwoStepGoAway fails then, for want of the final
// GOAWAY.
func (s *httpServer) serveHTTP2(h2 *http2.Server, hs *http.Server, nc net.Conn, tc *tls.Conn, tracked *trackedConn, h http.Handler) {
	var ctx context.Context
	if bc, ok := h.(interface{ BaseContext() context.Context }); ok {
		ctx = bc.BaseContext()
	}
	opts := &http2.ServeConnOpts{Context: ctx, Handler: h, BaseConfig: hs, SawClientPreface: tc == nil}
	if tracked == nil { // not accepted by our listener: nothing to drain it with
		h2.ServeConn(nc, opts)
		return
	}
	var orig net.Conn = nc
	if tc != nil {
		orig = tc
	}
	w := newH2Conn(nc, orig, tc == nil, s.t.changed)
	var served net.Conn = w
	if tc != nil {
		served = h2TLSConn{h2Conn: w, tc: tc}
	}
	if s.t.adoptHTTP2(tracked, w) {
		w.goAway() // the drain began while net/http was handing it over
	}
	h2.ServeConn(served, opts)
}

// adoptHTTP2 records that c speaks HTTP/2 through w, and reports whether
// the drain has begun, in which case the caller starts the two-step close.
func (t *tracker) adoptHTTP2(c *trackedConn, w *h2Conn) (draining bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !c.untracked {
		c.h2 = true
		c.h2w = w
	}
	return t.draining
}

// http2Conns returns the connections the two-step close applies to.
// Callers hold t.mu.
func (t *tracker) http2Conns() []*h2Conn {
	var ws []*h2Conn
	for c := range t.conns {
		if c.h2w != nil {
			ws = append(ws, c.h2w)
		}
	}
	return ws
}

// awaitingAck reports whether any HTTP/2 connection still waits for the
// acknowledgement of its PING (for at most wait after the drain asked).
func (t *tracker) awaitingAck(now time.Time, wait time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.ContainsFunc(t.http2Conns(), func(w *h2Conn) bool { return w.awaitingAck(now, wait) })
}
