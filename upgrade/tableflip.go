package upgrade

import (
	"regexp"
	"strconv"
	"sync"
	"time"
)

// tableflip (v1.2.3, pinned in go.mod) reports a child's fate only in the
// text of its errors. Every place that reads that text is here, and
// TestTableflipErrorText pins it. The expressions are compiled when a
// failure is first read, not in the package's initialisation, which every
// new generation runs before its main.
var (
	childExitRe    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`child pid=(\d+) exited(?:: (.*))?$`) })
	childTimeoutRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`child pid=(\d+) timed out`) })
)

// tableflipParentAlive is tableflip's refusal to upgrade while this
// process's own parent has not exited yet.
const tableflipParentAlive = "parent hasn't exited"

// upgradeOnce calls tableflip's Upgrade. WaitForParent can return before
// tableflip's own loop has noticed that the parent exited, and Upgrade then
// refuses with "parent hasn't exited" without starting anything; the
// lifecycle has seen the parent exit, so that refusal is retried for a
// moment.
func (u *Upgrader) upgradeOnce() error {
	for i := 0; ; i++ {
		err := u.tf.Upgrade()
		if err == nil || err.Error() != tableflipParentAlive || i == 100 {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// parseChildError turns tableflip's error strings into an UpgradeError.
func parseChildError(err error, stderr []string) *UpgradeError {
	e := &UpgradeError{Err: err, Stderr: stderr}
	msg := err.Error()
	if m := childTimeoutRe().FindStringSubmatch(msg); m != nil {
		e.ChildPID, _ = strconv.Atoi(m[1])
		e.TimedOut = true
		e.Exit = "signal: killed"
		return e
	}
	if m := childExitRe().FindStringSubmatch(msg); m != nil {
		e.ChildPID, _ = strconv.Atoi(m[1])
		e.Exit = m[2]
		if e.Exit == "" {
			e.Exit = "exit status 0"
		}
	}
	return e
}
