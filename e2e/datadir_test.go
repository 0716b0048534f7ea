package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"golang.org/x/sys/unix"
)

// Issue 10 items 7, 8 and 9: the server refuses to start on a data
// directory it cannot trust, rather than adopt a token another user
// planted or report ready with a database that fails every request. A
// path another user can change is a setting to fix (exit status 2); a
// database it cannot use is a start-up failure (1). Either way the message
// names the path and what to do.
func TestStartRefusesUntrustedDataDir(t *testing.T) {
	// A data directory a server used: a database of 300 keys, a token.
	seed := testkit.ShortTempDir(t)
	s := start(t, startOptions{dir: seed})
	c := &http.Client{Timeout: 10 * time.Second}
	for i := range 300 {
		req, _ := http.NewRequest("PUT", s.url(fmt.Sprintf("/kv/k%03d", i)), bytes.NewReader(bytes.Repeat([]byte("v"), 1000)))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("PUT k%03d: %d", i, resp.StatusCode)
		}
	}
	s.signal(s.pidOf(1), syscall.SIGTERM)
	if st := s.waitExit(s.pidOf(1), time.Minute); st != 0 {
		t.Fatalf("stop of the seeding server: exit status %d", st)
	}

	tests := []struct {
		name   string
		change func(t *testing.T, data string)
		status int
		want   []string // parts of the message; DATA stands for the data directory's absolute path
	}{
		{"world-writable data directory (a tmpfs mount point)", func(t *testing.T, data string) {
			mustChmod(t, data, 0o777|os.ModeSticky)
		}, 2, []string{"data directory ./data is writable by its group and others", "chmod 700 ./data"}},
		{"group-writable control token", func(t *testing.T, data string) {
			mustChmod(t, filepath.Join(data, "control.token"), 0o660)
		}, 2, []string{"control token file data/control.token is writable by its group", "chmod 600 data/control.token"}},
		{"database of another user", func(t *testing.T, data string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a file to another user")
			}
			if err := os.Chown(filepath.Join(data, "kv.db"), 65534, -1); err != nil {
				t.Fatal(err)
			}
		}, 2, []string{"database file DATA/kv.db is owned by", "chown"}},
		{"read-only database", func(t *testing.T, data string) {
			makeImmutable(t, filepath.Join(data, "kv.db"))
		}, 1, []string{"database DATA/kv.db is read-only", "chattr -i"}},
		{"empty database", func(t *testing.T, data string) {
			if err := os.Truncate(filepath.Join(data, "kv.db"), 0); err != nil {
				t.Fatal(err)
			}
		}, 1, []string{"database DATA/kv.db is empty (0 bytes)", "rm DATA/kv.db"}},
		{"damaged database", func(t *testing.T, data string) {
			db := filepath.Join(data, "kv.db")
			fi, err := os.Stat(db)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(db, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// A page in the middle: a leaf of the kv table or its index.
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xff, 0x13, 0x37, 0x00}, 1024), fi.Size()/4096/2*4096); err != nil {
				t.Fatal(err)
			}
		}, 1, []string{"database DATA/kv.db is damaged", ".recover"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testkit.ShortTempDir(t)
			data := filepath.Join(dir, "data")
			copyDir(t, filepath.Join(seed, "data"), data)
			tt.change(t, data)
			status, msg := startFails(t, dir)
			if status != tt.status {
				t.Errorf("start with a %s: exit status %d (%s), want %d", tt.name, status, msg, tt.status)
			}
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "DATA", data); !strings.Contains(msg, w) {
					t.Errorf("start with a %s: message %q, want it to contain %q", tt.name, msg, w)
				}
			}
		})
	}
}

// startFails starts the server in dir and returns its exit status and its
// last words ("server: ..."). A server that gets ready instead fails the
// test.
func startFails(t *testing.T, dir string) (int, string) {
	t.Helper()
	s := start(t, startOptions{dir: dir, noWait: true})
	l := s.logs.Wait(t, 2*time.Minute, "the server's ready event or start-up error", func(l testkit.LogLine) bool {
		return l.Msg() == "ready" || strings.HasPrefix(l.Raw, "server: ")
	})
	if l.Msg() == "ready" {
		t.Fatalf("the server started and reported ready")
	}
	return s.waitExit(s.cmd.Process.Pid, time.Minute), l.Raw
}

// copyDir copies the regular files of src into a new directory dst of the
// same mode.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue // the control socket
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

func mustChmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// makeImmutable sets the immutable attribute of path (chattr +i), which
// stops root as a mode does not, and clears it when the test ends.
func makeImmutable(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		mustChmod(t, path, 0o400)
		return
	}
	const fsImmutable = 0x10 // FS_IMMUTABLE_FL of linux/fs.h
	setFlags := func(set func(int) int) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
		if err != nil {
			return err
		}
		return unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, set(flags))
	}
	if err := setFlags(func(f int) int { return f | fsImmutable }); err != nil {
		t.Skipf("chattr +i %s: %v", path, err)
	}
	t.Cleanup(func() { // before the directory's removal, registered earlier
		if err := setFlags(func(f int) int { return f &^ fsImmutable }); err != nil {
			t.Errorf("chattr -i %s: %v", path, err)
		}
	})
}
