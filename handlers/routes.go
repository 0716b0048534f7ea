package handlers

import (
	"net/http"
	"strconv"
	"time"

	"github.com/rs/zerolog"
)

// Info identifies the generation that answers.
type Info struct {
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	Version    string    `json:"version"`
	StartedAt  time.Time `json:"started_at"`
}

// Lifecycle is what the handlers need to know of the process lifecycle.
type Lifecycle interface {
	// IsReady reports whether the generation should get new traffic.
	IsReady() bool
	// Draining is closed when the generation begins to drain.
	Draining() <-chan struct{}
}

// Options are the dependencies of the public API.
type Options struct {
	Info      Info
	Lifecycle Lifecycle
	Logger    zerolog.Logger
	// KV is the key-value store; nil leaves the /kv routes out.
	KV KV
}

// New returns the public API of the reference server. It exposes no
// control action: those live on the control listener (NewControl).
func New(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", Root(o.Info))
	mux.Handle("GET /healthz", Healthz())
	mux.Handle("GET /readyz", Readyz(o.Lifecycle))
	mux.Handle("GET /slow", Slow(o.Info))
	mux.Handle("POST /echo", Echo())
	mux.Handle("GET /events", Events(o.Info, o.Lifecycle, time.Now))
	mux.Handle("GET /ws", WebSocket(o.Lifecycle, o.Logger))
	if o.KV != nil {
		mux.Handle("GET /kv", KVList(o.KV, o.Logger))
		mux.Handle("GET /kv/{key...}", KVGet(o.KV, o.Logger))
		mux.Handle("PUT /kv/{key...}", KVPut(o.KV, o.Logger))
		mux.Handle("DELETE /kv/{key...}", KVDelete(o.KV, o.Logger))
	}
	return withRequestLog(o.Logger, withGeneration(o.Info.Generation, mux))
}

// withGeneration sets X-Generation on every response, errors included, so
// a client can tell which generation answered.
func withGeneration(gen int, h http.Handler) http.Handler {
	v := strconv.Itoa(gen)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Generation", v)
		h.ServeHTTP(w, r)
	})
}
