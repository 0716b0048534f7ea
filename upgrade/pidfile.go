package upgrade

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// pendingPIDFile is a PID file written beside its final name, so that a
// full or read-only filesystem fails start-up, before the commit point;
// commit renames it into place, which cannot run out of space.
type pendingPIDFile struct {
	tmp, path string
}

// preparePIDFile writes pid to a temporary file beside path and syncs it.
func preparePIDFile(path string, pid int) (*pendingPIDFile, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	_, err = fmt.Fprintf(f, "%d\n", pid)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	return &pendingPIDFile{tmp: f.Name(), path: path}, nil
}

// commit renames the file into place atomically: a reader sees the old
// pid or the new one, never an empty or partial file. Nil does nothing.
func (p *pendingPIDFile) commit() error {
	if p == nil {
		return nil
	}
	if err := os.Rename(p.tmp, p.path); err != nil {
		os.Remove(p.tmp)
		return fmt.Errorf("pid file %s: %w", p.path, err)
	}
	if d, err := os.Open(filepath.Dir(p.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// discard removes the temporary file. Nil does nothing.
func (p *pendingPIDFile) discard() {
	if p != nil {
		os.Remove(p.tmp)
	}
}

// writePIDFile replaces path with a file holding pid, atomically.
func writePIDFile(path string, pid int) error {
	p, err := preparePIDFile(path, pid)
	if err != nil {
		return err
	}
	return p.commit()
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
