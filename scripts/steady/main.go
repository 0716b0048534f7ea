// Command steady is the engine of scripts/bench-steady.sh. It measures the
// steady throughput of the cheapest endpoint, GET /healthz, on three
// servers side by side in one run:
//
//   - plain: a plain net/http server whose handler answers the reference
//     server's /healthz response (the same headers and body) from a
//     ServeMux route;
//   - upgrade: the same server, run by an upgrade.Upgrader (chain mode)
//     and served through upgrade.HTTP;
//   - reference: the reference server, cmd/server (-server);
//   - compare: optionally, another build of it (-compare), to measure a
//     change side by side.
//
// The load comes from outside clients: wrk (HTTP/1.1) and h2load (h2c,
// prior knowledge), in alternating rounds, the order of the servers
// rotating from round to round so that none always runs first. For each
// run it reads, from the server process, the CPU time it spent
// (/proc/PID/task/*/schedstat) and the heap allocations it made (the Go
// runtime's count: from a side listener of plain and upgrade, from the
// reference server's /metrics on its control socket). It prints every
// run, then the medians over the rounds and each server's ratios against
// plain, computed round by round. The load average is printed with every
// run: the ratios mean something only when the servers ran under the same
// conditions, which is why they run side by side.
//
// Everything listens on, and sends to, 127.0.0.1 only; every process it
// starts is stopped by pid before it exits.
//
// Usage:
//
//	steady -server PATH [-compare PATH] [-rounds 5] [-duration 5s] [-conns 16] [-streams 1] [-proto h1,h2c]
//	steady serve -kind plain|upgrade -addr HOST:PORT -stats HOST:PORT   (started by steady itself)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	var err error
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		err = serve(ctx, os.Args[2:], os.Stderr)
	} else {
		err = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "steady: %v\n", err)
		os.Exit(1)
	}
}

// usage is printed for -h.
const usage = `usage: steady -server PATH [flags]

Runs plain net/http, the same through upgrade, and the reference server
side by side, and loads each in turn with wrk (h1) and h2load (h2c).
`

func usageFunc(fs interface {
	Output() io.Writer
	PrintDefaults()
}) func() {
	return func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
}
