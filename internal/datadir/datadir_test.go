package datadir_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/datadir"
	"golang.org/x/sys/unix"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		dir     bool
		mode    fs.FileMode
		uid     int    // owner; -1 leaves the test's own
		wantErr string // "" for none; else a part of the message
	}{
		{"private directory", true, 0o700, -1, ""},
		{"directory others can read", true, 0o755, -1, ""},
		{"group-writable directory", true, 0o770, -1, "is writable by its group (mode drwxrwx---)"},
		{"world-writable directory", true, 0o777, -1, "is writable by its group and others"},
		{"tmpfs mount point", true, 0o777 | fs.ModeSticky, -1, "is writable by its group and others (mode dtrwxrwxrwx)"},
		{"others-writable directory", true, 0o703, -1, "is writable by others"},
		{"private file", false, 0o600, -1, ""},
		{"file others can read", false, 0o644, -1, ""},
		{"group-writable file", false, 0o660, -1, "is writable by its group (mode -rw-rw----)"},
		{"root's directory", true, 0o755, 0, ""},
		{"another user's directory", true, 0o700, 65534, "is owned by nobody, not by "},
		{"another user's file", false, 0o600, 65534, "is owned by nobody, not by "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "p")
			if tt.dir {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			if tt.uid >= 0 && tt.uid != os.Geteuid() {
				if os.Geteuid() != 0 {
					t.Skip("needs root to give a file to another user")
				}
				if err := os.Chown(path, tt.uid, -1); err != nil {
					t.Fatal(err)
				}
			}
			err := datadir.Check("test file", path)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Check(%s, mode %v) = %v, want nil", tt.name, tt.mode, err)
				}
				return
			}
			fix := "run chmod 600 " + path
			switch {
			case tt.uid >= 0:
				fix = "run chown "
			case tt.dir:
				fix = "run chmod 700 " + path
			}
			var ie *datadir.InsecureError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), "test file "+path+" "+tt.wantErr) || !strings.Contains(err.Error(), fix) {
				t.Errorf("Check(%s, mode %v) = %v, want an *InsecureError saying %q and %q", tt.name, tt.mode, err, "test file "+path+" "+tt.wantErr, fix)
			}
		})
	}
}

func TestCheckMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing")
	if err := datadir.Check("test file", path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check of a missing path = %v, want fs.ErrNotExist", err)
	}
}

func TestPrepare(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "data")
	if err := datadir.Prepare(dir); err != nil {
		t.Fatalf("Prepare(%s) = %v", dir, err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("Prepare made %s with mode %v (%v), want 0700", dir, fi.Mode(), err)
	}

	open := t.TempDir()
	if err := os.Chmod(open, 0o1777); err != nil {
		t.Fatal(err)
	}
	err := datadir.Prepare(open)
	var ie *datadir.InsecureError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "data directory "+open) || !strings.Contains(err.Error(), "chmod 700 "+open) {
		t.Errorf("Prepare of a 1777 directory = %v, want an *InsecureError saying chmod 700 %s", err, open)
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		max        int64
		want       string // content, or a part of the error
		wantErr    bool
	}{
		{"regular file", regular, 100, "content", false},
		{"at the bound", regular, 7, "content", false},
		{"symlink to a regular file", link, 100, "content", false},
		{"over the bound", regular, 6, "is 7 bytes, more than the 6", true},
		{"FIFO", fifo, 100, "is not a regular file (mode prw-------)", true},
		{"directory", dir, 100, "is not a regular file", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A FIFO with no writer blocks a plain open forever: the
			// read runs aside, so that the test fails instead of hanging.
			type result struct {
				b   []byte
				err error
			}
			done := make(chan result, 1)
			go func() {
				b, _, err := datadir.ReadFile(t.Context(), tt.path, tt.max)
				done <- result{b, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(20 * time.Second):
				// Unblock it: a writer that opens and closes gives EOF.
				if w, err := os.OpenFile(tt.path, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					w.Close()
				}
				<-done
				t.Fatalf("ReadFile(%s) blocked", tt.name)
			}
			switch {
			case tt.wantErr && (r.err == nil || !strings.Contains(r.err.Error(), tt.want)):
				t.Errorf("ReadFile(%s) = %q, %v; want an error containing %q", tt.name, r.b, r.err, tt.want)
			case !tt.wantErr && (r.err != nil || string(r.b) != tt.want):
				t.Errorf("ReadFile(%s) = %q, %v; want %q", tt.name, r.b, r.err, tt.want)
			}
		})
	}
	if _, _, err := datadir.ReadFile(t.Context(), filepath.Join(dir, "missing"), 100); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile of a missing file = %v, want fs.ErrNotExist", err)
	}
}
