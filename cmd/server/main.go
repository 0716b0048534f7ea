// Command server is the reference server of handoff: an HTTP service that
// upgrades itself on SIGHUP without refusing a connection or dropping a
// request, and stops gracefully on SIGTERM. See the README.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx := context.Background()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "ctl" {
		err = runCtl(ctx, os.Args[2:], os.Getenv, os.Stdout)
	} else {
		err = run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	}
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "server: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) {
		os.Exit(2)
	}
	os.Exit(1) // a failed action, a start-up error, or a second stop signal
}
