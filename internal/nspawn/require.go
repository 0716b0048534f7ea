package nspawn

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequiredEnv, set to 1, turns every skip of this package into a failure:
// CI installs what the tests need and sets it, so that they cannot pass
// there by not running.
const RequiredEnv = "HANDOFF_NSPAWN_REQUIRED"

// installHint is what installs the host tools. systemd-container is pinned
// to the host's systemd: unpinned, apt upgrades the host's systemd too.
const installHint = "apt-get update && apt-get install -y debootstrap " +
	"systemd-container=$(dpkg-query -W -f='${Version}' systemd)"

// Require skips t, or fails it when HANDOFF_NSPAWN_REQUIRED=1, unless this
// host can boot a container: root, systemd-nspawn, nsenter, unshare,
// mount, and a cgroup v2 hierarchy.
func Require(t testing.TB) {
	t.Helper()
	if m := missing(); len(m) > 0 {
		cannot(t, "cannot boot a systemd container here: %s", strings.Join(m, "; "))
	}
}

// cannot skips t with the message, or fails it when the environment says
// the tests must run.
func cannot(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequiredEnv) == "1" {
		t.Fatalf(format+" ("+RequiredEnv+"=1: this must run here)", args...)
	}
	t.Skipf(format, args...)
}

// missing lists what this host lacks to boot a container, each with the
// way to get it.
func missing() []string {
	var m []string
	if os.Geteuid() != 0 {
		m = append(m, "not root: systemd-nspawn, mounts and cgroups need it (run the tests as root, e.g. sudo -E go test ./e2e/systemd/)")
	}
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		m = append(m, "no systemd-nspawn: "+installHint)
	}
	for _, tool := range []string{"nsenter", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			m = append(m, "no "+tool+": apt-get install -y util-linux mount")
		}
	}
	if _, err := findCgroups(); err != nil {
		m = append(m, err.Error())
	}
	return m
}

// requireDebootstrap is Require for building a root file system.
func requireDebootstrap(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("debootstrap"); err != nil {
		cannot(t, "cannot build a Debian root file system: no debootstrap: %s", installHint)
	}
}
