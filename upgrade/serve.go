package upgrade

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
)

// served is one http.Server this generation serves, with its listener.
type served struct {
	srv     *http.Server
	ln      net.Listener // the tracked listener Serve was given
	t       *tracker
	stopped atomic.Bool   // the drain closed ln; Serve's error is expected
	done    chan struct{} // closed when the Serve loop has returned
}

// Serve serves srv on ln until this generation drains, in a goroutine that
// ends when the drain closes ln. It wraps srv.Handler and srv.ConnState so
// that the drain can track every connection and end each one cleanly; when
// srv.TLSConfig is set it serves TLS (with HTTP/2) using its certificates.
//
// Serve must be called before Ready and before Run, once per server.
func (u *Upgrader) Serve(srv *http.Server, ln net.Listener) {
	s := &served{srv: srv, t: newTracker(u.log), done: make(chan struct{})}
	s.ln = &trackedListener{Listener: ln, t: s.t}

	prevState := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
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
	srv.Handler = u.track(s.t, h)

	u.mu.Lock()
	u.servers = append(u.servers, s)
	u.mu.Unlock()

	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer close(s.done)
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(s.ln, "", "")
		} else {
			err = srv.Serve(s.ln)
		}
		if s.stopped.Load() || errors.Is(err, http.ErrServerClosed) {
			return
		}
		// The listener failed under a server that was not told to stop:
		// nothing is accepted any more, so this generation cannot go on.
		u.log.Error().Err(err).Str("addr", ln.Addr().String()).Msg("serve failed")
		u.fail(err)
	}()
}

// track counts requests and, once the drain has begun, makes every response
// end its connection: HTTP/1 replies carry Connection: close, and net/http
// turns that header into a GOAWAY on HTTP/2.
func (u *Upgrader) track(t *tracker, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		u.inFlight.Add(1)
		defer u.inFlight.Add(-1)
		if u.draining.Load() {
			u.drainRequests.Add(1)
		}
		c, _ := r.Context().Value(connKey{}).(*trackedConn)
		t.enter(c)
		defer t.leave(c)
		h.ServeHTTP(&drainWriter{ResponseWriter: w, t: t, c: c}, r)
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
