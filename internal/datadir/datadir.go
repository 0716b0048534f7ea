// Package datadir prepares the server's data directory and guards the
// files the server trusts: the directory itself, the control token and
// the database.
//
// A file is trusted only if nobody but the user the server runs as (or
// root) can change it. Another user who can write the data directory can
// plant a control token that the server would adopt, or replace the
// database; a world-writable directory, such as a tmpfs mount point
// (mode 1777), lets every user do so. Check refuses such a path with an
// *InsecureError that says what to run to fix it. Check a file after
// opening it (CheckInfo with the open file's Stat), so that what is
// checked is what is read.
package datadir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// Prepare creates dir (mode 0700: it holds the control socket and token)
// if it does not exist, checks it as Check does, and proves that files
// can be created in it, so that a bad -data-dir fails at start with a
// message that names it.
func Prepare(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory %s is not writable: %w (set -data-dir to a writable directory)", dir, err)
	}
	if err := Check("data directory", dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".writable-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w (set -data-dir to a writable directory)", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// Check checks that path, following symlinks, is owned by the user this
// process runs as or by root, and is writable by neither its group nor
// others. desc names it in the error ("control token file"). The error
// is an *InsecureError if the check fails, or Stat's error (matching
// fs.ErrNotExist for a missing path).
func Check(desc, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", desc, err)
	}
	return CheckInfo(desc, path, fi)
}

// CheckInfo is Check of the file at path whose information fi is: that of
// an open file, to check what was opened rather than what the path names
// now.
func CheckInfo(desc, path string, fi fs.FileInfo) error {
	me := os.Geteuid()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != me && st.Uid != 0 {
		return &InsecureError{
			Desc: desc, Path: path,
			Problem: fmt.Sprintf("is owned by %s, not by %s (this server's user) or root", userName(int(st.Uid)), userName(me)),
			Fix:     fmt.Sprintf("chown %s %s, or use another one", userName(me), path),
		}
	}
	if w := fi.Mode().Perm() & 0o022; w != 0 {
		who := map[fs.FileMode]string{0o020: "its group", 0o002: "others", 0o022: "its group and others"}[w]
		mode := "600"
		if fi.IsDir() {
			mode = "700"
		}
		return &InsecureError{
			Desc: desc, Path: path,
			Problem: fmt.Sprintf("is writable by %s (mode %v)", who, fi.Mode()),
			Fix:     fmt.Sprintf("chmod %s %s", mode, path),
		}
	}
	return nil
}

// InsecureError is a path that a user other than this server's, or root,
// can change.
type InsecureError struct {
	Desc    string // what the path is to the server, such as "data directory"
	Path    string
	Problem string // such as "is writable by others (mode drwxrwxrwt)"
	Fix     string // a command that fixes it
}

func (e *InsecureError) Error() string {
	hint := ""
	if e.Desc == "data directory" {
		hint = " (a tmpfs mount point is 1777: use a directory inside it)"
	}
	return fmt.Sprintf("%s %s %s, so another user could change what the server trusts: run %s%s",
		e.Desc, e.Path, e.Problem, e.Fix, hint)
}

// userName is the name of uid, or the number if it has none.
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

// ReadFile reads the regular file at path, at most max bytes, and returns
// its content and information. It never blocks on a FIFO or a device: it
// opens path without blocking and refuses anything but a regular file,
// and a file larger than max. ctx is checked between reads. The error
// matches fs.ErrNotExist for a missing file.
func ReadFile(ctx context.Context, path string, max int64) ([]byte, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fi, fmt.Errorf("%s is not a regular file (mode %v)", path, fi.Mode())
	}
	if fi.Size() > max {
		return nil, fi, fmt.Errorf("%s is %d bytes, more than the %d it may hold", path, fi.Size(), max)
	}
	b := make([]byte, 0, fi.Size())
	chunk := make([]byte, 64<<10)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fi, fmt.Errorf("read %s: %w", path, err)
		}
		n, err := f.Read(chunk)
		b = append(b, chunk[:n]...)
		if int64(len(b)) > max {
			return nil, fi, fmt.Errorf("%s grew to more than the %d bytes it may hold", path, max)
		}
		if errors.Is(err, io.EOF) {
			return b, fi, nil
		}
		if err != nil {
			return nil, fi, err
		}
	}
}
