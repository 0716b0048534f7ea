// Command minimal is scripts/baseline written with handoff's upgrade
// package instead of tableflip's bare API: the least a program that adopts
// the library runs, so that the restart benchmark can tell what the
// library costs from what the reference server's own start-up costs (its
// store, its gRPC service, its config). It serves what the benchmark hits,
// GET / with X-Generation, with the same server timeouts as cmd/server.
//
// Usage: minimal [-addr 127.0.0.1:8080]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// Server timeouts as in cmd/server/run.go and scripts/baseline.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 90 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "minimal: %v\n", err)
		os.Exit(1)
	}
}

// run serves until this generation has handed over to the next one or
// was stopped (SIGTERM, SIGINT), and its drain has finished.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("minimal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "`address` of the HTTP listener (HTTP/1.1 and h2c)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: minimal takes only flags", fs.Arg(0))
	}
	upg, err := upgrade.New(upgrade.Options{
		Logger:  zerolog.New(stderr).With().Timestamp().Logger(),
		Version: "minimal",
	})
	if err != nil {
		return err
	}
	st := upg.Status()
	ln, err := upg.Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{
		Handler:           routes(st.PID, st.Generation),
		Protocols:         &protocols,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	if err := upg.Serve(ln, upgrade.HTTP(server), nil); err != nil {
		return err
	}
	if err := upg.Ready(); err != nil {
		return err
	}
	return upg.Run(ctx)
}

// routes answer GET / with the process's pid and generation, as
// scripts/baseline does, and set X-Generation on every response.
func routes(pid, generation int) http.Handler {
	body, _ := json.Marshal(struct {
		PID        int    `json:"pid"`
		Generation int    `json:"generation"`
		Version    string `json:"version"`
	}{pid, generation, "minimal"}) // ints and a string: cannot fail
	body = append(body, '\n')
	gen := strconv.Itoa(generation)
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Generation", gen)
		mux.ServeHTTP(w, r)
	})
}
