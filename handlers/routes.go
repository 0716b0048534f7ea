package handlers

import (
	"net/http"
	"net/http/pprof"
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
	// IsReady reports whether the service should get new traffic: false
	// from the moment a stop begins, true across a handoff.
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
	rt := newRouter()
	rt.handle("GET /{$}", Root(o.Info))
	rt.handle("GET /healthz", Healthz())
	rt.handle("GET /readyz", Readyz(o.Lifecycle))
	rt.handle("GET /slow", Slow(o.Info))
	rt.handle("POST /echo", Echo())
	rt.handle("GET /events", Events(o.Info, o.Lifecycle, time.Now))
	rt.handle("GET /ws", WebSocket(o.Lifecycle, o.Logger))
	if o.KV != nil {
		rt.handle("GET /kv", KVList(o.KV, o.Logger))
		// Keys are opaque: /kv/a//b and /kv/a/../b name the keys "a//b"
		// and "a/../b", never cleaned into another key (see router).
		rt.handleTree("/kv/", "key", map[string]http.Handler{
			"GET":    KVGet(o.KV, o.Logger),
			"PUT":    KVPut(o.KV, o.Logger),
			"DELETE": KVDelete(o.KV, o.Logger),
		})
	}
	return withRequestLog(o.Logger, rt, withGeneration(o.Info.Generation, rt))
}

// NewControl returns the control API: the operator's way to see, upgrade
// and stop the server. Every route requires the bearer token, and on a
// unix socket a peer of an allowed uid; a request that fails either is
// refused before any route is looked at.
func NewControl(o ControlOptions) http.Handler {
	rt := newRouter()
	rt.handle("GET /status", controlStatus(o.Controller))
	rt.handle("POST /upgrade", controlUpgrade(o.Controller, o.Logger))
	rt.handle("POST /shutdown", controlShutdown(o.Controller, o.Logger))
	rt.handle("GET /metrics", o.Metrics)
	rt.handle("GET /debug/pprof/", http.HandlerFunc(pprof.Index))
	rt.handle("GET /debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
	rt.handle("GET /debug/pprof/profile", http.HandlerFunc(pprof.Profile))
	rt.handle("GET /debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
	rt.handle("GET /debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	return authenticate(o, rt)
}

// withGeneration sets X-Generation on every response, errors included, so
// a client can tell which generation answered. Its value is one slice for
// all responses, as jsonType is.
func withGeneration(gen int, h http.Handler) http.Handler {
	v := []string{strconv.Itoa(gen)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Generation"] = v
		h.ServeHTTP(w, r)
	})
}
