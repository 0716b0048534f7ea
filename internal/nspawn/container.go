package nspawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Timeouts of the container's life. Booting takes 1–3 s and powering off
// about 2 s on two cores; these leave room for a loaded machine.
const (
	bootTimeout     = 2 * time.Minute
	poweroffTimeout = 30 * time.Second
	// DefaultExecTimeout bounds a command run by Run or Exec without a
	// deadline of its own.
	DefaultExecTimeout = 2 * time.Minute
)

// env is the environment of every command run inside: nothing of the
// test's own (GOFLAGS, NOTIFY_SOCKET, HANDOFF_...), and no pager or colour.
var env = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
	"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
}

// Container is a booted systemd-nspawn container, torn down when the test
// that booted it ends.
type Container struct {
	t testing.TB
	// Name is the machine name, unique on the host.
	Name string
	// PID1 is the host pid of the container's init, systemd.
	PID1 int
	// Systemd is what `systemctl --version` says, first line.
	Systemd string

	dir     string // the overlay's upper and work dirs, and the console log
	cmd     *exec.Cmd
	exited  chan struct{} // closed when systemd-nspawn has exited
	roots   []string      // cgroup hierarchies
	cgroup  string        // the cgroup made for it in each
	stopped atomic.Bool
}

var seq atomic.Int64

// Boot starts a container on a throwaway overlay of rootfs, with systemd
// as PID 1 and a private network namespace, and waits until systemd
// reports the system running (or degraded). It is powered off, and all
// it used removed, when t ends.
func Boot(t testing.TB, rootfs string) *Container {
	t.Helper()
	Require(t)
	roots, err := findCgroups()
	if err != nil {
		t.Fatal(err)
	}
	sweepCgroups(roots)
	n := seq.Add(1)
	// The machine is handoff-PID-N, its cgroup handoff-nspawn-PID-N.
	c := &Container{
		t:      t,
		Name:   fmt.Sprintf("handoff-%d-%d", os.Getpid(), n),
		dir:    t.TempDir(),
		exited: make(chan struct{}),
		roots:  roots,
		cgroup: fmt.Sprintf("%s%d-%d", cgroupPrefix, os.Getpid(), n),
	}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(c.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	procs, err := makeCgroups(roots, c.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	console, err := os.Create(filepath.Join(c.dir, "console.log"))
	if err != nil {
		removeCgroups(roots, c.cgroup)
		t.Fatal(err)
	}
	defer console.Close()

	// The shell joins the container's cgroups (systemd-nspawn with
	// --keep-unit makes its payload/ and supervisor/ cgroups under the one
	// it runs in), mounts the overlay in the private mount namespace that
	// unshare made (it vanishes with the last process in it, so nothing is
	// left mounted on the host even if the test is killed), and becomes
	// systemd-nspawn.
	const script = `set -e
for f in $CGROUP_PROCS; do echo $$ > "$f"; done
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
exec systemd-nspawn -D "$4" -M "$5" -b --private-network --register=no --keep-unit --console=read-only`
	c.cmd = exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
		rootfs, filepath.Join(c.dir, "upper"), filepath.Join(c.dir, "work"), filepath.Join(c.dir, "root"), c.Name)
	c.cmd.Env = append([]string{
		"CGROUP_PROCS=" + strings.Join(procs, " "),
		// The host may run no systemd (as in CI): nspawn then needs
		// these two, and the flags above.
		"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1",
	}, env...)
	c.cmd.Stdout = console
	c.cmd.Stderr = console
	// If this test process dies before its cleanup, systemd-nspawn gets
	// SIGTERM and powers the container off.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	began := time.Now()
	if err := c.cmd.Start(); err != nil {
		removeCgroups(roots, c.cgroup)
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() { // ends when systemd-nspawn exits
		c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(c.teardown)

	if err := c.waitBooted(began.Add(bootTimeout)); err != nil {
		t.Fatalf("boot container %s from %s: %v\nconsole:\n%s", c.Name, rootfs, err, c.Console())
	}
	c.Systemd, _ = c.Exec(context.Background(), "sh", "-c", "systemctl --version | head -n 1")
	c.Systemd = strings.TrimSpace(c.Systemd)
	t.Logf("container %s: %s, running in %v", c.Name, c.Systemd, time.Since(began).Round(time.Millisecond))
	return c
}

// waitBooted finds the container's init and waits until systemd says the
// system is running or degraded.
func (c *Container) waitBooted(deadline time.Time) error {
	last := errors.New("systemd-nspawn started no init yet")
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			return fmt.Errorf("systemd-nspawn exited (%v)", c.cmd.ProcessState)
		default:
		}
		if c.PID1 == 0 {
			if pid := findInit(c.cmd.Process.Pid); pid > 0 {
				c.PID1 = pid
			}
		}
		if c.PID1 != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := c.Exec(ctx, "systemctl", "is-system-running")
			cancel()
			state := strings.TrimSpace(out)
			switch {
			case state == "running":
				return nil
			case state == "degraded":
				failed, _ := c.Exec(context.Background(), "systemctl", "--failed", "--no-legend")
				c.t.Logf("container %s booted degraded; failed units:\n%s", c.Name, failed)
				return nil
			case err != nil:
				last = fmt.Errorf("systemctl is-system-running: %q: %w", state, err)
			default:
				last = fmt.Errorf("system state %q", state)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not running after %v: %w", bootTimeout, last)
}

// findInit returns the host pid of the process among the descendants of
// pid that is PID 1 of its own pid namespace, or 0.
func findInit(pid int) int {
	queue := []int{pid}
	for range 4 { // nspawn → (outer child →) init
		var next []int
		for _, p := range queue {
			for _, child := range children(p) {
				if nsPID(child) == 1 {
					return child
				}
				next = append(next, child)
			}
		}
		queue = next
	}
	return 0
}

func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// nsPID returns pid's pid in its innermost pid namespace.
func nsPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

// Command returns a command that runs argv inside the container: in all
// its namespaces, as root, in /, with a minimal environment. The caller
// must wait for it before the test ends.
func (c *Container) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.PID1), "-a", "--"}, argv...)...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Exec runs argv inside the container and returns its output, stdout and
// stderr together. Without a deadline on ctx it is bounded by
// DefaultExecTimeout. A non-zero exit is an *exec.ExitError.
func (c *Container) Exec(ctx context.Context, argv ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultExecTimeout)
		defer cancel()
	}
	out, err := c.Command(ctx, argv...).CombinedOutput()
	return string(out), err
}

// Run runs argv inside the container and returns its output; it fails the
// test if the command fails.
func (c *Container) Run(argv ...string) string {
	c.t.Helper()
	out, err := c.Exec(context.Background(), argv...)
	if err != nil {
		c.t.Fatalf("in %s: %s: %v\n%s", c.Name, strings.Join(argv, " "), err, out)
	}
	return out
}

// Path is the host's path of path inside the container, through the
// container init's root: files written there appear inside at once. An
// absolute symbolic link on the way would resolve on the host, so path
// should not go through one (Debian's /bin, /lib and /sbin are relative).
func (c *Container) Path(path string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", c.PID1), path)
}

// WriteFile writes data to path inside the container the way a deploy
// must: to a new file beside it, then renamed over it, so that nothing
// ever sees (or executes) a half-written file. Parent directories are
// made as needed.
func (c *Container) WriteFile(path string, data []byte, perm os.FileMode) {
	c.t.Helper()
	dst := c.Path(path)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		c.t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Chmod(tmp, perm); err != nil { // not filtered by the umask
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		c.t.Fatal(err)
	}
}

// CopyFile copies the host file src to dst inside the container, as
// WriteFile does.
func (c *Container) CopyFile(src, dst string, perm os.FileMode) {
	c.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		c.t.Fatal(err)
	}
	c.WriteFile(dst, b, perm)
}

// Journal returns journalctl's output for args (such as "-u", "x.service"),
// with precise timestamps.
func (c *Container) Journal(args ...string) string {
	c.t.Helper()
	return c.Run(append([]string{"journalctl", "--no-pager", "-o", "short-precise"}, args...)...)
}

// Console returns what the container wrote to its console so far.
func (c *Container) Console() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "console.log"))
	return string(b)
}

// teardown powers the container off (SIGTERM to systemd-nspawn makes it
// ask init for a clean shutdown), kills it if it will not stop, and
// removes its cgroups. The overlay went with systemd-nspawn's mount
// namespace; its files go with t.TempDir.
func (c *Container) teardown() {
	if c.stopped.Swap(true) {
		return
	}
	select {
	case <-c.exited:
	default:
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(poweroffTimeout):
			c.t.Errorf("container %s: no poweroff within %v of SIGTERM; killing it", c.Name, poweroffTimeout)
			c.cmd.Process.Kill()
			<-c.exited
		}
	}
	if err := removeCgroups(c.roots, c.cgroup); err != nil {
		c.t.Errorf("container %s: %v", c.Name, err)
	}
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
