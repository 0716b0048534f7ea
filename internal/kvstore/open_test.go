package kvstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// populated returns a data directory whose database holds n keys of
// 1000-byte values, closed (its WAL folded into kv.db).
func populated(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		kvstore.MustPut(t, s, "key"+strconv.Itoa(i), strings.Repeat("v", 1000))
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openFails opens the store in dir and returns the error it must fail with.
func openFails(t *testing.T, dir string) error {
	t.Helper()
	s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir, Logger: testkit.Logger(t)})
	if err == nil {
		s.Close(context.Background())
	}
	return err
}

// wantErr fails the test unless err contains every one of parts.
func wantErr(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("Open with %s = nil error, want one containing %q", what, parts)
		return
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("Open with %s = %q, want it to contain %q", what, err, p)
		}
	}
}

// Issue 10 item 7: a data directory or database file that another user
// can change was used as it was; a tmpfs mount point is 1777.
func TestOpenRefusesFilesOthersCanChange(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, dir, db string) string // returns the path at fault
		fix    string
	}{
		{"world-writable data directory", func(t *testing.T, dir, db string) string {
			chmod(t, dir, 0o777)
			return dir
		}, "chmod 700"},
		{"tmpfs-like data directory (1777)", func(t *testing.T, dir, db string) string {
			chmod(t, dir, 0o777|os.ModeSticky)
			return dir
		}, "chmod 700"},
		{"group-writable data directory", func(t *testing.T, dir, db string) string {
			chmod(t, dir, 0o770)
			return dir
		}, "chmod 700"},
		{"group-writable database", func(t *testing.T, dir, db string) string {
			chmod(t, db, 0o660)
			return db
		}, "chmod 600"},
		{"world-writable -wal", func(t *testing.T, dir, db string) string {
			touch(t, db+"-wal", 0o666)
			return db + "-wal"
		}, "chmod 600"},
		{"world-writable -shm", func(t *testing.T, dir, db string) string {
			touch(t, db+"-shm", 0o606)
			return db + "-shm"
		}, "chmod 600"},
		{"database of another user", func(t *testing.T, dir, db string) string {
			chown(t, db, 65534)
			return db
		}, "chown"},
		{"data directory of another user", func(t *testing.T, dir, db string) string {
			chown(t, dir, 65534)
			return dir
		}, "chown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := populated(t, 1)
			db, _ := filepath.Abs(filepath.Join(dir, "kv.db"))
			at := tt.change(t, dir, db)
			wantErr(t, tt.name, openFails(t, dir), at+" ", tt.fix)
		})
	}
}

// Issue 10 item 7: the database and its -wal and -shm were created with
// SQLite's default mode 0644 less the umask.
func TestOpenCreatesPrivateFiles(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0))
	dir := filepath.Join(t.TempDir(), "data") // a TempDir made under umask 0 is 0777
	s := kvstore.OpenTest(t, dir)
	kvstore.MustPut(t, s, "k", "v") // the WAL and its index exist while the store is open
	for _, name := range []string{"kv.db", "kv.db-wal", "kv.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s created with mode %v under umask 0, want 0600", name, fi.Mode().Perm())
		}
	}
}

// Issue 10 item 8: SQLite opens a database it cannot write read-only, with
// no error; the store then started and failed every write.
func TestOpenRefusesReadOnlyDatabase(t *testing.T) {
	dir := populated(t, 1)
	db, _ := filepath.Abs(filepath.Join(dir, "kv.db"))
	unwritable(t, db)
	wantErr(t, "a read-only kv.db", openFails(t, dir), db+" is read-only", "chmod 600")
}

// Issue 10 item 9: an empty kv.db started as an empty store, and a damaged
// one started and failed the reads of some keys forever.
func TestOpenRefusesDamagedDatabase(t *testing.T) {
	const page = 4096
	tests := []struct {
		name   string
		damage func(t *testing.T, db string)
		want   []string // besides the path
	}{
		{"empty", func(t *testing.T, db string) { truncate(t, db, 0) }, []string{"is empty (0 bytes)", "rm "}},
		{"truncated", func(t *testing.T, db string) { truncate(t, db, size(t, db)/2) }, []string{"is damaged", ".recover"}},
		{"overwritten page", func(t *testing.T, db string) {
			// A page in the middle: a leaf of the kv table or its index.
			garbage := bytes.Repeat([]byte{0xff, 0x13, 0x37, 0x00}, page/4)
			writeAt(t, db, garbage, (size(t, db)/page/2)*page)
		}, []string{"is damaged", "mv ", ".recover", "backup"}},
		{"overwritten header", func(t *testing.T, db string) {
			writeAt(t, db, bytes.Repeat([]byte("x"), 100), 0)
		}, []string{"is damaged", ".recover"}},
		{"missing, with its WAL", func(t *testing.T, db string) {
			if err := os.Remove(db); err != nil {
				t.Fatal(err)
			}
			touch(t, db+"-wal", 0o600)
			writeAt(t, db+"-wal", bytes.Repeat([]byte{1}, 4096), 0)
		}, []string{"is missing, but its write-ahead log", "restore"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := populated(t, 300)
			db, _ := filepath.Abs(filepath.Join(dir, "kv.db"))
			tt.damage(t, db)
			wantErr(t, "a "+tt.name+" kv.db", openFails(t, dir), append([]string{db + " "}, tt.want...)...)
		})
	}
}

// Issue 10 item 9: say in the log when a database was created new, so that
// a database lost by accident shows.
func TestOpenLogsCreatedDatabase(t *testing.T) {
	dir := t.TempDir()
	for i, want := range []bool{true, false} {
		var logs bytes.Buffer
		s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir, Logger: zerolog.New(&logs)})
		if err != nil {
			t.Fatal(err)
		}
		kvstore.MustPut(t, s, "k", "v")
		if err := s.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), `"message":"created new database"`); got != want {
			t.Errorf("open #%d: logged \"created new database\" = %v, want %v; log:\n%s", i+1, got, want, logs.String())
		}
	}
	// A cache snapshot says that the directory held a database: the new one
	// is a warning.
	if err := os.Remove(filepath.Join(dir, "kv.db")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cache.snapshot"), []byte(`{"version":1,"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close(t.Context())
	if !strings.Contains(logs.String(), `{"level":"warn","cache_snapshot":"cache.snapshot"`) ||
		!strings.Contains(logs.String(), `"message":"created new database"`) {
		t.Errorf("a new database beside a cache snapshot: log %q, want a warning", logs.String())
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	if err := os.Chown(path, uid, -1); err != nil {
		t.Fatal(err)
	}
}

func touch(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, nil, mode); err != nil {
		t.Fatal(err)
	}
	chmod(t, path, mode) // past the umask
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func truncate(t *testing.T, path string, n int64) {
	t.Helper()
	if err := os.Truncate(path, n); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// unwritable makes path unwritable for this process: mode 0400, or, for
// root, whom modes do not stop, the immutable attribute (chattr +i),
// removed when the test ends.
func unwritable(t *testing.T, path string) {
	t.Helper()
	chmod(t, path, 0o400)
	if os.Geteuid() != 0 {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags|fsImmutable)
	}
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("%s: the filesystem has no immutable attribute: %v", path, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before t.TempDir's removal, registered earlier
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags); err != nil {
			t.Errorf("chattr -i %s: %v", path, err)
		}
	})
}

// fsImmutable is FS_IMMUTABLE_FL of linux/fs.h, which x/sys/unix lacks.
const fsImmutable = 0x10

// Generations that start at once on a new data directory all open the one
// database that the first of them created; none sees it empty.
func TestOpenConcurrentCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	const n = 4
	var logs [n]bytes.Buffer
	errs := make(chan error, n)
	for i := range n {
		go func() {
			s, err := kvstore.Open(t.Context(), kvstore.Options{Dir: dir, Logger: zerolog.New(&logs[i])})
			if err == nil {
				_, err = s.Put(t.Context(), "k"+strconv.Itoa(i), []byte("v"))
				s.Close(context.Background())
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Open during %d concurrent Opens of a new directory: %v", n, err)
		}
	}
	created := 0
	for i := range logs {
		created += strings.Count(logs[i].String(), `"message":"created new database"`)
	}
	if created != 1 {
		t.Errorf("%d concurrent Opens of a new directory logged \"created new database\" %d times, want 1", n, created)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 { // kv.db; the WAL goes with the last Close
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("data directory after the Opens holds %q, want only kv.db", names)
	}
}
