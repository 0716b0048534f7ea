// Command baseline is the server that scripts/bench-restart.sh measures
// handoff against: a hot restart written the way tableflip's README and
// its net/http example do it, and nothing more. On SIGHUP it calls
// Upgrade; once the new process is ready it drains with a plain
// http.Server.Shutdown under a 30s deadline, which closes idle keep-alive
// connections at once. That drain is the thing being compared, so do not
// improve it here.
//
// It serves what the benchmark hits on the reference server, with the same
// server timeouts as cmd/server: GET / answers
// {"pid":…,"generation":…,"version":"baseline"}, and every response carries
// X-Generation. tableflip knows no generation number, so each process
// passes its own plus one to its successor in BASELINE_GENERATION, which
// tableflip copies into the child's environment.
//
// Usage: baseline [-addr 127.0.0.1:8080] [-pid-file path]
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
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/rs/zerolog"
)

// generationEnv carries the generation number from parent to child.
const generationEnv = "BASELINE_GENERATION"

// Server timeouts as in cmd/server/run.go, so that the two servers differ
// only in how they drain.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 90 * time.Second // cmd/server: handlers.MaxSlow + 30s
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10
)

// shutdownTimeout is the deadline of the drain, as in tableflip's example.
const shutdownTimeout = 30 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "baseline: %v\n", err)
		os.Exit(1)
	}
}

// info is the body of GET /.
type info struct {
	PID        int    `json:"pid"`
	Generation int    `json:"generation"`
	Version    string `json:"version"`
}

// run serves until this process has handed over to a new one, or ctx is
// done, and the drain has finished.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "`address` of the HTTP listener (HTTP/1.1 and h2c)")
	pidFile := fs.String("pid-file", "", "`path` of the PID file naming the serving process (none if empty)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: baseline takes only flags", fs.Arg(0))
	}

	self := info{PID: os.Getpid(), Generation: 1, Version: "baseline"}
	if v := getenv(generationEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%s=%q: want a whole number from 1", generationEnv, v)
		}
		self.Generation = n
	}
	log := zerolog.New(stderr).Hook(timestampHook{}).With().
		Int("pid", self.PID).Int("generation", self.Generation).Logger()

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile})
	if err != nil {
		return fmt.Errorf("tableflip: %w", err)
	}
	defer upg.Stop()

	// Upgrade on SIGHUP; stop (with the same drain) when ctx is done. The
	// goroutine exits with the process, as in tableflip's example.
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		for {
			select {
			case <-sig:
				// The successor's environment is this process's, read
				// when Upgrade starts it.
				os.Setenv(generationEnv, strconv.Itoa(self.Generation+1))
				log.Info().Msg("upgrade requested")
				if err := upg.Upgrade(); err != nil {
					log.Warn().Err(err).Msg("upgrade failed")
				}
			case <-ctx.Done():
				upg.Stop()
				return
			}
		}
	}()

	// tableflip refuses to upgrade ("parent hasn't exited") until it has
	// seen its parent exit; the benchmark waits for this line before the
	// next SIGHUP. The goroutine ends then, or when ctx is done.
	if upg.HasParent() {
		go func() {
			if upg.WaitForParent(ctx) == nil {
				log.Info().Msg("parent exited")
			}
		}()
	}

	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *addr, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{
		Handler:           routes(self),
		Protocols:         &protocols,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(ln) }() // returns once Shutdown closes ln

	log.Info().Str("addr", ln.Addr().String()).Msg("listening")
	if err := upg.Ready(); err != nil {
		return fmt.Errorf("ready: %w", err)
	}
	log.Info().Msg("ready")

	select {
	case <-upg.Exit():
	case err := <-serveErr:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}

	log.Info().Msg("drain started")
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := server.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info().Int64("duration_ms", time.Since(start).Milliseconds()).Msg("drain finished")
	return nil
}

// routes are the baseline's routes: the ones the benchmark hits.
func routes(self info) http.Handler {
	body, _ := json.Marshal(self) // a struct of ints and a string: cannot fail
	body = append(body, '\n')
	gen := strconv.Itoa(self.Generation)
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

// timestampHook adds the time with nanoseconds, as cmd/server does, since
// restarts take milliseconds; zerolog's global time format is left alone.
type timestampHook struct{}

func (timestampHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Str(zerolog.TimestampFieldName, time.Now().Format(time.RFC3339Nano))
}
