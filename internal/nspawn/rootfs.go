package nspawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Suite is a Debian release, and the systemd it ships.
type Suite struct {
	Name    string // as debootstrap knows it: trixie
	Systemd int    // the major version of its systemd
}

// The suites the tests boot: the newest systemd Debian ships, and the one
// of Debian 12 (the same as RHEL 9's; Ubuntu 22.04 has 249).
var (
	Trixie   = Suite{Name: "trixie", Systemd: 257}
	Bookworm = Suite{Name: "bookworm", Systemd: 252}
)

// Packages is what debootstrap adds to the minbase variant: systemd as
// init, the D-Bus that systemctl talks through, and curl for the tests.
const Packages = "systemd,systemd-sysv,dbus,curl"

// recipeVersion changes with anything in how a root file system is built,
// so that one built by an older recipe is rebuilt rather than reused.
const recipeVersion = 1

// stampPath is where, inside a built root file system, its recipe is
// written, last: a tree without it (or with another) is not reused.
const stampPath = "etc/handoff-nspawn-rootfs"

// buildTimeout bounds one debootstrap run.
const buildTimeout = 15 * time.Minute

func stamp(suite string) string {
	return fmt.Sprintf("recipe %d\nsuite %s\nvariant minbase\ninclude %s\n", recipeVersion, suite, Packages)
}

// CacheDir is the directory root file systems are cached in:
// $HANDOFF_CACHE, else $XDG_CACHE_HOME/handoff, else ~/.cache/handoff.
func CacheDir(getenv func(string) string) (string, error) {
	if d := getenv("HANDOFF_CACHE"); d != "" {
		return d, nil
	}
	if d := getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "handoff"), nil
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".cache", "handoff"), nil
	}
	return "", errors.New("no cache directory: set HANDOFF_CACHE (or XDG_CACHE_HOME, or HOME)")
}

// Rootfs returns the root file system of suite s, building it on first use
// (about 90 s and 220 MB each) and reusing it after. It skips t where it
// cannot be built; see Require.
func Rootfs(t testing.TB, s Suite) string {
	t.Helper()
	Require(t)
	cache, err := CacheDir(os.Getenv)
	if err != nil {
		cannot(t, "%v", err)
	}
	dir := filepath.Join(cache, "rootfs-"+s.Name)
	if !fresh(dir, stamp(s.Name)) {
		requireDebootstrap(t)
	}
	began := time.Now()
	built, err := ensure(dir, stamp(s.Name), func(tmp string) error {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		return debootstrap(ctx, s.Name, tmp, dir+".log", os.Getenv("HANDOFF_DEBIAN_MIRROR"))
	})
	if err != nil {
		cannot(t, "build the Debian %s root file system in %s: %v", s.Name, dir, err)
	}
	if built {
		t.Logf("built the Debian %s root file system in %s in %v", s.Name, dir, time.Since(began).Round(time.Second))
	}
	return dir
}

// fresh reports whether dir is a finished root file system of this recipe.
func fresh(dir, want string) bool {
	b, err := os.ReadFile(filepath.Join(dir, stampPath))
	return err == nil && string(b) == want
}

// ensure makes dir a root file system stamped want, unless it is one:
// build fills a new directory beside it, which is stamped and renamed
// over it only when build succeeded, so that an interrupted or failed
// build is never used. A lock file beside dir serialises test processes
// that need the same root file system at once.
func ensure(dir, want string, build func(tmp string) error) (built bool, err error) {
	if fresh(dir, want) {
		return false, nil
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return false, err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return false, err
	}
	defer lock.Close() // releases the lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if fresh(dir, want) { // another process built it while this one waited
		return false, nil
	}
	// Under the lock, any earlier build directory is a dead process's.
	stale, _ := filepath.Glob(dir + ".tmp-*")
	for _, d := range stale {
		os.RemoveAll(d)
	}
	tmp, err := os.MkdirTemp(parent, filepath.Base(dir)+".tmp-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := os.Chmod(tmp, 0o755); err != nil {
		return false, err
	}
	if err := build(tmp); err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Join(tmp, stampPath)), 0o755); err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(tmp, stampPath), []byte(want), 0o644); err != nil {
		return false, err
	}
	if _, err := os.Stat(dir); err == nil {
		old := fmt.Sprintf("%s.old-%d", dir, os.Getpid())
		if err := os.Rename(dir, old); err != nil {
			return false, err
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return false, err
	}
	return true, nil
}

// debootstrap installs suite's minbase with Packages into dir, logging to
// logFile. It runs in mount and pid namespaces of its own: the /proc and
// /sys it mounts in dir go away with it, and if it is stopped (ctx) or
// this process dies, every process of the build dies with unshare.
func debootstrap(ctx context.Context, suite, dir, logFile, mirror string) error {
	log, err := os.Create(logFile)
	if err != nil {
		return err
	}
	defer log.Close()
	args := []string{"--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
		"debootstrap", "--variant=minbase", "--include=" + Packages, suite, dir}
	if mirror != "" {
		args = append(args, mirror)
	}
	cmd := exec.CommandContext(ctx, "unshare", args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debootstrap %s: %w; the end of its log (%s):\n%s", suite, err, logFile, tail(logFile, 15))
	}
	// The package cache and lists are not needed to boot: 40 MB less per
	// suite, and less for each test's overlay to look through.
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"} {
		files, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, f := range files {
			os.Remove(f)
		}
	}
	return nil
}

// tail returns the last n lines of the file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tailString(string(b), n)
}
