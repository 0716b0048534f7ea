package handlers

import (
	"net/http"
	"time"

	"github.com/rs/zerolog"
)

// withRequestLog logs every request at Debug level: method, the route of
// rt that served it, status, bytes and duration. Never the path, the
// query or the body: a path holds a user's key, and any of them may hold
// a secret pasted by mistake. When Debug is off it is not installed at
// all.
func withRequestLog(log zerolog.Logger, rt *router, h http.Handler) http.Handler {
	if !log.Debug().Enabled() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		log.Debug().Str("method", r.Method).Str("route", rt.served(r)).Str("proto", r.Proto).
			Int("status", sw.status).Int64("bytes", sw.bytes).
			Float64("duration_ms", float64(time.Since(start))/float64(time.Millisecond)).Msg("request")
	})
}

// statusWriter records the status and size of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	// 1xx answers come before the real one, except 101, which is final
	// for a connection that switches protocols (WebSocket).
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController and WebSocket libraries reach the
// connection's own writer (Flush, Hijack, deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
