package testkit

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/handoff-go/handoff/upgrade"
)

// Server is a server run inside the test process by a standalone
// upgrade.Upgrader (no handoff, and signals ignored), on a loopback port:
// the "server in a thread" of an in-process test.
type Server struct {
	Upgrader *upgrade.Upgrader
	Addr     string // host:port it listens on
}

// Start runs the server that newServer returns for u, the new Upgrader:
// it listens on 127.0.0.1 (port chosen by the system), serves, is ready,
// and runs until the test stops it with Upgrader.Shutdown or the test
// ends. newServer is called before the Upgrader is ready, so it may
// register cleanup hooks.
//
// opts is the Upgrader's; Start sets Standalone, IgnoreSignals and Logger
// (the test's log). When the test ends, Start's cleanup shuts the server
// down (bounded by 10 s) and waits until every goroutine the Upgrader
// started has ended.
func Start(t testing.TB, opts upgrade.Options, newServer func(u *upgrade.Upgrader) upgrade.Server) *Server {
	t.Helper()
	opts.Standalone = true
	opts.IgnoreSignals = true
	opts.Logger = Logger(t)
	u, err := upgrade.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := u.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Serve(ln, newServer(u), nil); err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() { // ends when the generation has stopped
		u.Run(context.Background())
		close(runDone)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		u.Shutdown(ctx)
		select {
		case <-runDone:
		case <-time.After(time.Minute):
			t.Errorf("Upgrader.Run did not return within a minute of Shutdown: a goroutine of the server is stuck")
		}
	})
	return &Server{Upgrader: u, Addr: ln.Addr().String()}
}

// StartHTTP is Start for an HTTP handler, served by HTTPServer(h).
func StartHTTP(t testing.TB, opts upgrade.Options, h http.Handler) *Server {
	t.Helper()
	return Start(t, opts, func(*upgrade.Upgrader) upgrade.Server { return upgrade.HTTP(HTTPServer(h)) })
}

// HTTPServer is an http.Server for h that speaks HTTP/1.1 and h2c (HTTP/2
// without TLS), and bounds the time to read a request's header.
func HTTPServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: 5 * time.Second}
}

// URL is the address of path on the server, over http.
func (s *Server) URL(path string) string { return "http://" + s.Addr + path }
