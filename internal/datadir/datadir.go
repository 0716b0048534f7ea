// Package datadir prepares the server's data directory.
package datadir

import (
	"fmt"
	"os"
)

// Prepare creates dir (mode 0700: it holds the control socket and token)
// if it does not exist, and proves that files can be created in it, so
// that a bad -data-dir fails at start with a message that names it.
func Prepare(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory %s is not writable: %w (set -data-dir to a writable directory)", dir, err)
	}
	f, err := os.CreateTemp(dir, ".writable-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w (set -data-dir to a writable directory)", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}
