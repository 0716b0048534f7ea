package main

import (
	"context"
	"errors"
	"time"

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

// pendingStore is a store being opened in the background.
type pendingStore struct {
	done chan struct{} // closed once kv or err is set
	kv   *kvstore.Store
	err  error
}

// openStoreAsync starts openStore in a goroutine, which ends once the
// store is open or has failed to open.
func openStoreAsync(ctx context.Context, dir string, log zerolog.Logger) *pendingStore {
	p := &pendingStore{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.kv, p.err = openStore(ctx, dir, log)
	}()
	return p
}

// wait returns the store, or why it did not open.
func (p *pendingStore) wait() (*kvstore.Store, error) {
	<-p.done
	return p.kv, p.err
}

// discard waits for the open and closes the store: start-up failed
// meanwhile for another reason.
func (p *pendingStore) discard() {
	if kv, err := p.wait(); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		kv.Close(ctx)
	}
}

func insecureIsUsage(err error) error {
	var ie *datadir.InsecureError
	if errors.As(err, &ie) {
		return &usageError{msg: err.Error()}
	}
	return err
}
