// Package atomicfile replaces files so that a reader, a crash or a power
// loss sees the old content or the new, never an empty or torn file.
package atomicfile

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces path with a file of mode perm holding data: it writes
// a temporary file in the same directory, syncs it, renames it over path
// and syncs the directory, so that the rename itself survives a crash.
// If ctx is done before the rename, path is left as it was.
//
// Two writers of the same path never tear it: the last rename wins.
func WriteFile(ctx context.Context, path string, data []byte, perm fs.FileMode) error {
	p, err := Prepare(path, data, perm)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		p.Discard()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return p.Commit()
}

// Pending is a file written and synced beside its final name, not yet in
// place: a caller that must know a write can succeed (the disk is not full
// or read-only) before it commits to something else prepares it first,
// and commits it after; the rename cannot run out of space.
type Pending struct {
	tmp, path string
}

// Prepare writes data, with mode perm, to a temporary file beside path
// and syncs it.
func Prepare(path string, data []byte, perm fs.FileMode) (*Pending, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		// CreateTemp made it 0600; the umask does not apply to chmod.
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &Pending{tmp: f.Name(), path: path}, nil
}

// Commit renames the file into place and syncs the directory, so that the
// rename survives a crash. A nil Pending does nothing.
func (p *Pending) Commit() error {
	if p == nil {
		return nil
	}
	if err := os.Rename(p.tmp, p.path); err != nil {
		os.Remove(p.tmp)
		return fmt.Errorf("write %s: %w", p.path, err)
	}
	d, err := os.Open(filepath.Dir(p.path))
	if err != nil {
		return fmt.Errorf("write %s: %w", p.path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", p.path, err)
	}
	return nil
}

// Discard removes the temporary file. A nil Pending does nothing.
func (p *Pending) Discard() {
	if p != nil {
		os.Remove(p.tmp)
	}
}
