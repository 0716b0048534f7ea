package main

import (
	"context"
	"errors"

	"github.com/handoff-go/handoff/internal/datadir"
	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/rs/zerolog"
)

// The key-value store is internal/kvstore. run opens it through these two
// functions, which make a data directory or file that another user can
// change a usage error (exit status 2): a setting to fix, not a failure
// that a restart could cure.

// prepareDataDir creates the data directory if needed, and checks that
// it is private to this user and writable.
func prepareDataDir(dir string) error {
	return insecureIsUsage(datadir.Prepare(dir))
}

// openStore opens the key-value store in dir; log is its component logger.
func openStore(ctx context.Context, dir string, log zerolog.Logger) (*kvstore.Store, error) {
	kv, err := kvstore.Open(ctx, kvstore.Options{Dir: dir, Logger: log})
	return kv, insecureIsUsage(err)
}

func insecureIsUsage(err error) error {
	var ie *datadir.InsecureError
	if errors.As(err, &ie) {
		return &usageError{msg: err.Error()}
	}
	return err
}
