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
	if err := write(ctx, path, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func write(ctx context.Context, path string, data []byte, perm fs.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
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
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
