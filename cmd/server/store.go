package main

import (
	"context"

	"github.com/handoff-go/handoff/internal/datadir"
	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/rs/zerolog"
)

// The key-value store is internal/kvstore; run opens it through these.

// prepareDataDir creates the data directory if needed, and checks that
// it is writable.
func prepareDataDir(dir string) error {
	return datadir.Prepare(dir)
}

// openStore opens the key-value store in dir; log is its component logger.
func openStore(ctx context.Context, dir string, log zerolog.Logger) (*kvstore.Store, error) {
	return kvstore.Open(ctx, kvstore.Options{Dir: dir, Logger: log})
}
