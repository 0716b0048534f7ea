package nspawn

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupPrefix starts the name of every cgroup this package makes, then
// the pid of the test process and a sequence number: a cgroup whose test
// process is gone is stale, and the next Boot removes it.
const cgroupPrefix = "handoff-nspawn-"

// findCgroups returns the roots of the hierarchies a container's cgroup
// must be made in: the cgroup v2 hierarchy, and on a hybrid host also the
// name=systemd v1 one, which systemd-nspawn reads its own cgroup from.
func findCgroups() ([]string, error) {
	if isCgroup2("/sys/fs/cgroup") {
		return []string{"/sys/fs/cgroup"}, nil
	}
	if !isCgroup2("/sys/fs/cgroup/unified") {
		return nil, errors.New("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified " +
			"(systemd 257 needs it: boot the host with cgroup v2, or a hybrid hierarchy)")
	}
	roots := []string{"/sys/fs/cgroup/unified"}
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup/systemd", &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
		roots = append(roots, "/sys/fs/cgroup/systemd")
	}
	return roots, nil
}

func isCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// makeCgroups makes the cgroup name in each root and returns the paths of
// their cgroup.procs files, which a process writes its pid to to join.
func makeCgroups(roots []string, name string) (procs []string, err error) {
	for _, root := range roots {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			removeCgroups(roots, name)
			return nil, fmt.Errorf("make cgroup: %w", err)
		}
		procs = append(procs, filepath.Join(dir, "cgroup.procs"))
	}
	return procs, nil
}

// removeCgroups removes the cgroup name and everything under it from each
// root, deepest first. Processes still in them (the container is gone by
// now, so these can only be its leftovers) are killed first.
func removeCgroups(roots []string, name string) error {
	var errs []error
	for _, root := range roots {
		if err := removeTree(filepath.Join(root, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeTree removes the cgroup directory dir and its descendants.
func removeTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		err := unix.Rmdir(d)
		if errors.Is(err, unix.EBUSY) {
			killProcs(filepath.Join(d, "cgroup.procs"))
			err = retryRmdir(d)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// killProcs sends SIGKILL to each process listed in a cgroup.procs file.
func killProcs(procsFile string) {
	b, err := os.ReadFile(procsFile)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// retryRmdir removes dir once the processes that were in it are gone.
func retryRmdir(dir string) error {
	var err error
	for range 200 {
		if err = unix.Rmdir(dir); !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// sweepCgroups removes the cgroups of earlier test processes that are
// gone (killed before their cleanup ran). Those of live processes, other
// test binaries booting containers at the same time, are left alone.
func sweepCgroups(roots []string) {
	for _, root := range roots {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, e := range entries {
			pid, ok := cgroupOwner(e.Name())
			if !ok || !e.IsDir() || processExists(pid) {
				continue
			}
			removeTree(filepath.Join(root, e.Name()))
		}
	}
}

// cgroupOwner returns the pid of the test process that made the cgroup
// called name, when name is one of ours.
func cgroupOwner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, cgroupPrefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	return pid, err == nil && pid > 0
}

func processExists(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
