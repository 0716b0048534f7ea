package nspawn_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/nspawn"
	"golang.org/x/sys/unix"
)

// TestBoot boots each suite, runs commands inside, and checks that the
// teardown leaves no process, mount or cgroup behind.
func TestBoot(t *testing.T) {
	for _, s := range []nspawn.Suite{nspawn.Trixie, nspawn.Bookworm} {
		t.Run(s.Name, func(t *testing.T) {
			t.Parallel() // two first builds at once: half the wait
			rootfs := nspawn.Rootfs(t, s)
			var c *nspawn.Container
			t.Run("boot", func(t *testing.T) {
				c = nspawn.Boot(t, rootfs)
				if want := fmt.Sprintf("systemd %d ", s.Systemd); !strings.HasPrefix(c.Systemd, want) {
					t.Errorf("systemctl --version = %q, want %q...", c.Systemd, want)
				}
				if got := c.Run("cat", "/proc/1/comm"); strings.TrimSpace(got) != "systemd" {
					t.Errorf("PID 1 inside is %q, want systemd", strings.TrimSpace(got))
				}
				hostNet, _ := os.Readlink("/proc/self/ns/net")
				if inside, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", c.PID1)); inside == hostNet {
					t.Errorf("the container shares the host's network namespace %s", hostNet)
				}

				c.WriteFile("/usr/local/bin/hello", []byte("#!/bin/sh\necho hello from $(cat /etc/debian_version)\n"), 0o755)
				if got := c.Run("hello"); !strings.HasPrefix(got, "hello from ") {
					t.Errorf("hello = %q, want %q...", got, "hello from ")
				}
				_, err := c.Exec(context.Background(), "sh", "-c", "exit 3")
				if code := exitCode(err); code != 3 {
					t.Errorf("exit 3 inside: exit code %d (err %v), want 3", code, err)
				}
				if j := c.Journal("-b", "-u", "systemd-journald.service"); j == "" {
					t.Error("journalctl printed nothing")
				}
				// A test writes through the container's root, never into
				// the cached root file system under it.
				if _, err := os.Stat(filepath.Join(rootfs, "usr/local/bin/hello")); err == nil {
					t.Error("a file written in the container appeared in the cached root file system")
				}
			})
			if c == nil {
				return
			}
			if err := unix.Kill(c.PID1, 0); err != unix.ESRCH {
				t.Errorf("after teardown, the container's init (pid %d): kill -0 = %v, want ESRCH", c.PID1, err)
			}
			mounts, _ := os.ReadFile("/proc/self/mountinfo")
			if strings.Contains(string(mounts), c.Name) || strings.Contains(string(mounts), rootfs) {
				t.Errorf("after teardown, a mount of the container is left:\n%s", mounts)
			}
			// The container's cgroup is named after it (the other suite's
			// container may still be running).
			cgroup := "handoff-nspawn-" + strings.TrimPrefix(c.Name, "handoff-")
			for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"} {
				for _, d := range []string{cgroup, "payload", "supervisor"} {
					if _, err := os.Stat(filepath.Join(root, d)); err == nil {
						t.Errorf("after teardown, cgroup %s is left", filepath.Join(root, d))
					}
				}
			}
		})
	}
}

func exitCode(err error) int {
	if e, ok := err.(interface{ ExitCode() int }); ok {
		return e.ExitCode()
	}
	return -1
}
