// Command handoff-check judges a server's restarts under load: it starts
// the server, sends requests from clients that retry nothing, restarts the
// server again and again, and counts every request's outcome. See -h and
// the README's "Test your own service".
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	// As a child subreaper, every process the server re-executes stays a
	// descendant of this one after its parent exits, so none escapes.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ue *usageError
	switch {
	case err == nil:
	case errors.Is(err, errHelp):
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "handoff-check: %v\n", err)
		os.Exit(2)
	case errors.Is(err, errFailed):
		os.Exit(1)
	default:
		fmt.Fprintf(os.Stderr, "handoff-check: %v\n", err)
		os.Exit(1)
	}
}
