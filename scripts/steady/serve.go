package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// healthzBody is the body of the reference server's GET /healthz.
const healthzBody = `{"status":"ok"}` + "\n"

// healthz answers what the reference server's GET /healthz answers, the
// way a plain net/http handler writes a fixed response: the same headers
// (Content-Type, and X-Generation, which the reference server sets on
// every response) and the same body.
func healthz() http.Handler {
	body := []byte(healthzBody)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Generation", "1")
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	return mux
}

// serve runs one of the comparison servers until ctx ends: plain net/http,
// or the same served through upgrade. A second listener, on -stats,
// answers GET /mallocs with the process's count of heap allocations.
func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("steady serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("kind", "plain", "`kind` of server: plain or upgrade")
	addr := fs.String("addr", "127.0.0.1:0", "loopback `address` to serve GET /healthz on")
	stats := fs.String("stats", "127.0.0.1:0", "loopback `address` to serve GET /mallocs on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, a := range []string{*addr, *stats} {
		if err := checkLoopback(a); err != nil {
			return err
		}
	}
	sln, err := net.Listen("tcp", *stats)
	if err != nil {
		return fmt.Errorf("stats listener: %w", err)
	}
	ssrv := &http.Server{Handler: http.HandlerFunc(mallocs), ReadHeaderTimeout: 5 * time.Second}
	go ssrv.Serve(sln) // returns when Close closes sln
	defer ssrv.Close()

	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	// The same timeouts as the reference server (cmd/server/run.go), so
	// that the servers differ only in what the comparison is about.
	srv := &http.Server{
		Handler:           healthz(),
		Protocols:         &p,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	switch *kind {
	case "plain":
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			return err
		}
		errC := make(chan error, 1)
		go func() { errC <- srv.Serve(ln) }()
		select {
		case err := <-errC:
			return err
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		}
	case "upgrade":
		u, err := upgrade.New(upgrade.Options{
			Logger:  zerolog.New(stderr).Level(zerolog.WarnLevel),
			Version: "steady",
		})
		if err != nil {
			return err
		}
		ln, err := u.Listen(ctx, "tcp", *addr)
		if err != nil {
			return err
		}
		if err := u.Serve(ln, upgrade.HTTP(srv), nil); err != nil {
			return err
		}
		if err := u.Ready(); err != nil {
			return err
		}
		return u.Run(ctx)
	}
	return fmt.Errorf("-kind %q: want plain or upgrade", *kind)
}

// mallocs answers the number of heap objects allocated so far.
func mallocs(w http.ResponseWriter, r *http.Request) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.Write(strconv.AppendUint(nil, ms.Mallocs, 10))
}

// checkLoopback refuses an address that is not on the loopback interface.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q: use 127.0.0.1 or ::1 (this benchmark stays on loopback)", addr)
	}
	return nil
}
