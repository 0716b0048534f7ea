// Command server is the reference server of handoff: an HTTP service that
// upgrades itself on SIGHUP without refusing a connection or dropping a
// request, and stops gracefully on SIGTERM. See the README.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/handoff-go/handoff/upgrade"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "server: %v\n", err)
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		os.Exit(2)
	case errors.Is(err, upgrade.ErrForced):
		os.Exit(1)
	default:
		os.Exit(1)
	}
}
