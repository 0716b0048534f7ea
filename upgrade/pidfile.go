package upgrade

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"github.com/handoff-go/handoff/internal/atomicfile"
)

// preparePIDFile writes pid beside path, so that a full or read-only
// filesystem fails start-up, before the commit point; the commit renames
// it into place, which cannot run out of space.
func preparePIDFile(path string, pid int) (*atomicfile.Pending, error) {
	p, err := atomicfile.Prepare(path, fmt.Appendf(nil, "%d\n", pid), 0o644)
	if err != nil {
		return nil, fmt.Errorf("pid file: %w", err)
	}
	return p, nil
}

// writePIDFile replaces path with a file holding pid, atomically: a reader
// sees the old pid or the new one, never an empty or partial file.
func writePIDFile(path string, pid int) error {
	p, err := preparePIDFile(path, pid)
	if err != nil {
		return err
	}
	return p.Commit()
}

// removePIDFile removes path if it still names pid; a successor may have
// replaced it.
func removePIDFile(path string, pid int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if string(bytes.TrimSpace(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}
