package upgrade

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Result is a successful upgrade: the generation that took over.
type Result struct {
	PID        int           `json:"pid"`
	Version    string        `json:"version"`
	Generation int           `json:"generation"`
	Duration   time.Duration `json:"-"`
}

// UpgradeError says why a new generation did not take over. The old
// generation keeps serving.
type UpgradeError struct {
	// ChildPID is the pid of the new generation, when one was started.
	ChildPID int
	// Exit is how the new generation ended, such as "exit status 2" or
	// "signal: killed"; empty when it did not start or did not end.
	Exit string
	// TimedOut is set when it was killed for not becoming ready in time.
	TimedOut bool
	// Stderr holds the last lines it wrote before it failed.
	Stderr []string
	// Err is the underlying cause.
	Err error
}

func (e *UpgradeError) Error() string {
	var b strings.Builder
	switch {
	case e.TimedOut:
		fmt.Fprintf(&b, "new generation (pid %d) was not ready in time and was killed", e.ChildPID)
	case e.ChildPID != 0 && e.Exit != "":
		fmt.Fprintf(&b, "new generation (pid %d) exited before it was ready: %s", e.ChildPID, e.Exit)
	case e.ChildPID != 0:
		fmt.Fprintf(&b, "new generation (pid %d) failed: %v", e.ChildPID, e.Err)
	default:
		fmt.Fprintf(&b, "new generation not started: %v", e.Err)
	}
	if len(e.Stderr) > 0 {
		fmt.Fprintf(&b, "; last stderr line: %s", e.Stderr[len(e.Stderr)-1])
	}
	return b.String()
}

func (e *UpgradeError) Unwrap() error { return e.Err }

// spawnResult is a child that took over, and the link to it.
type spawnResult struct {
	Result
	link    *link
	teeDone chan struct{}
}

type upgradeOutcome struct {
	res Result
	err error
}

// Upgrade starts a new generation from the binary at this process's path
// and waits until it is ready or has failed. On success this generation
// starts to drain and Run returns once it is done. If the previous
// generation is still draining, Upgrade first waits for it to exit, which
// tableflip requires. It fails with ErrUpgradeInProgress while another
// upgrade runs, with *UpgradeError when the new generation failed, and
// with ctx.Err() if ctx ends first (the upgrade goes on).
func (u *Upgrader) Upgrade(ctx context.Context) (Result, error) {
	ch := make(chan upgradeOutcome, 1)
	if err := u.request("api", ch); err != nil {
		return Result{}, err
	}
	select {
	case o := <-ch:
		return o.res, o.err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// request queues an upgrade. A request that comes while one runs is run
// after it (a signal) or refused (a caller waiting for a result, who would
// otherwise get the result of an upgrade it did not ask for); requests
// that come while one waits collapse into it.
func (u *Upgrader) request(source string, waiter chan upgradeOutcome) error {
	if u.tf == nil {
		return ErrStandalone
	}
	if u.pid1 {
		return ErrHotRestartDisabled
	}
	select {
	case <-u.stopC:
		return ErrStopping
	default:
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.running {
		if waiter != nil {
			return ErrUpgradeInProgress
		}
		if !u.again {
			u.log.Info().Str("source", source).Msg("upgrade queued: another upgrade is in progress")
		}
		u.again = true
		return nil
	}
	if waiter != nil {
		u.waiters = append(u.waiters, waiter)
	}
	if u.pending {
		return nil // collapses into the one already waiting
	}
	u.pending = true
	u.pendingSrc = source
	u.log.Info().Str("source", source).Msg("upgrade requested")
	select {
	case u.wake <- struct{}{}:
	default:
	}
	return nil
}

// worker runs queued upgrades one at a time. It ends when the generation
// stops or hands over.
func (u *Upgrader) worker() {
	defer u.wg.Done()
	for {
		select {
		case <-u.wake:
		case <-u.stopC:
			u.failWaiters(ErrStopping)
			return
		}
		if !u.waitTurn() {
			u.failWaiters(ErrStopping)
			return
		}
		u.mu.Lock()
		u.pending = false
		u.running = true
		u.state = StateUpgrading
		source := u.pendingSrc
		waiters := u.waiters
		u.waiters = nil
		u.mu.Unlock()

		succ, rec, err := u.attempt(source)

		u.mu.Lock()
		u.running = false
		u.lastUpgrade = &rec
		again := u.again
		u.again = false
		if err == nil {
			u.upgrades.Succeeded++
			u.successor = succ
		} else {
			u.upgrades.Failed++
			if u.state == StateUpgrading {
				u.state = StateServing
			}
		}
		u.mu.Unlock()
		for _, w := range waiters {
			w <- upgradeOutcome{res: resultOf(succ), err: err}
		}

		if err == nil {
			if again {
				// Asked for while this one ran, perhaps for a binary
				// deployed since: the new generation runs it once its
				// parent (this process) has exited.
				u.log.Info().Int("new_pid", succ.PID).Msg("forwarding queued upgrade to new generation")
				if err := syscall.Kill(succ.PID, syscall.SIGHUP); err != nil {
					u.log.Warn().Err(err).Msg("forward queued upgrade")
				}
			}
			u.beginHandoff()
			return
		}
		if again {
			u.mu.Lock()
			u.pending = true
			u.pendingSrc = "queued"
			u.mu.Unlock()
			select {
			case u.wake <- struct{}{}:
			default:
			}
		}
	}
}

func resultOf(s *spawnResult) Result {
	if s == nil {
		return Result{}
	}
	return s.Result
}

func (u *Upgrader) failWaiters(err error) {
	u.mu.Lock()
	waiters := u.waiters
	u.waiters = nil
	u.pending = false
	u.mu.Unlock()
	for _, w := range waiters {
		w <- upgradeOutcome{err: err}
	}
}

// waitTurn waits until an upgrade may start: this generation is ready and
// the one before it has exited. tableflip refuses to upgrade while the
// parent is still draining; its drain deadline bounds the wait. It returns
// false if the generation stops first.
func (u *Upgrader) waitTurn() bool {
	select {
	case <-u.readyC:
	default:
		u.log.Info().Msg("upgrade waits until this generation is ready")
		select {
		case <-u.readyC:
		case <-u.stopC:
			return false
		}
	}
	if u.parent == nil {
		return true
	}
	ctx, cancel := untilClosed(u.stopC)
	defer cancel()
	quick, qcancel := context.WithTimeout(ctx, 10*time.Millisecond)
	err := u.tf.WaitForParent(quick)
	qcancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		return ctx.Err() == nil
	}
	start := time.Now()
	u.log.Info().Int("parent_pid", u.parentPID).Msg("upgrade waits for the previous generation to finish draining")
	if err := u.tf.WaitForParent(ctx); err != nil && ctx.Err() != nil {
		return false
	}
	u.log.Info().Float64("waited_ms", ms(time.Since(start))).Msg("previous generation exited: running queued upgrade")
	return true
}

// attempt runs one upgrade: check the binary, start it with the sockets,
// wait for its ready report.
func (u *Upgrader) attempt(source string) (*spawnResult, UpgradeRecord, error) {
	start := time.Now()
	rec := UpgradeRecord{Source: source, StartedAt: start}
	fail := func(uerr *UpgradeError) (*spawnResult, UpgradeRecord, error) {
		rec.Duration = Duration(time.Since(start))
		rec.Error = uerr.Error()
		ev := u.log.Warn().Err(uerr).Str("source", source).Float64("duration_ms", ms(time.Since(start)))
		if uerr.ChildPID != 0 {
			ev = ev.Int("child_pid", uerr.ChildPID)
		}
		if uerr.Exit != "" {
			ev = ev.Str("exit_status", uerr.Exit)
		}
		if uerr.TimedOut {
			ev = ev.Bool("timed_out", true).Float64("upgrade_timeout_ms", ms(u.opts.UpgradeTimeout))
		}
		if len(uerr.Stderr) > 0 {
			ev = ev.Strs("stderr_tail", uerr.Stderr)
		}
		ev.Msg("upgrade failed: old generation keeps serving")
		u.notify.reloadFailed(uerr.Error())
		return nil, rec, uerr
	}

	u.log.Info().Str("source", source).Msg("upgrade started")
	u.notify.reloading()
	exe, err := checkBinary()
	if err != nil {
		return fail(&UpgradeError{Err: err})
	}
	u.mu.Lock()
	h := hello{
		Generation: u.gen + 1, ParentPID: u.pid, Source: source,
		RequestedAt: start, Upgrades: u.upgrades, Listeners: u.listenKeys,
	}
	u.mu.Unlock()
	sp, err := u.prepareSpawn(h)
	if err != nil {
		return fail(&UpgradeError{Err: err})
	}
	err = u.upgradeOnce()
	sp.restore(u.stderr)
	if err != nil {
		sp.link.conn.Close()
		return fail(parseChildError(err, sp.stderrTail()))
	}
	m, err := sp.link.recv(5 * time.Second)
	if err != nil || m.Ready == nil {
		// The child reported ready to tableflip, so it has taken over
		// anyway; only its details are missing.
		u.log.Warn().AnErr("error", err).Msg("new generation sent no ready report")
		m.Ready = &report{Generation: u.gen + 1}
	}
	succ := &spawnResult{
		Result: Result{
			PID: m.Ready.PID, Version: m.Ready.Version, Generation: m.Ready.Generation,
			Duration: time.Since(start),
		},
		link:    sp.link,
		teeDone: sp.teeDone,
	}
	rec.OK = true
	rec.Duration = Duration(succ.Duration)
	rec.NewPID = succ.PID
	rec.NewVersion = succ.Version
	rec.NewGeneration = succ.Generation
	u.log.Info().Str("source", source).Str("binary", exe).Int("new_pid", succ.PID).
		Str("new_version", succ.Version).Int("new_generation", succ.Generation).
		Float64("time_to_ready_ms", ms(succ.Duration)).Msg("child ready")
	u.notify.handedOver(succ.PID)
	return succ, rec, nil
}

// upgradeOnce calls tableflip's Upgrade. WaitForParent can return before
// tableflip's own loop has noticed that the parent exited, and Upgrade then
// refuses with "parent hasn't exited" without starting anything; waitTurn
// has seen the parent exit, so that refusal is retried for a moment.
func (u *Upgrader) upgradeOnce() error {
	for i := 0; ; i++ {
		err := u.tf.Upgrade()
		if err == nil || err.Error() != "parent hasn't exited" || i == 100 {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkBinary finds the binary tableflip will execute, the way it will
// (os.Args[0], looked up like exec.LookPath does), and checks that it is
// an executable file, so that a missing binary is a clear error rather
// than a failed fork.
func checkBinary() (string, error) {
	exe := os.Args[0]
	if !strings.Contains(exe, "/") {
		var err error
		if exe, err = exec.LookPath(exe); err != nil {
			return "", fmt.Errorf("binary %s: %w (install the new binary there, then retry)", os.Args[0], err)
		}
	}
	fi, err := os.Stat(exe)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w (install the new binary at this path, then retry)", exe, errors.Unwrap(err))
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("binary %s is not a regular file", exe)
	}
	if err := unix.Access(exe, unix.X_OK); err != nil || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("binary %s is not executable (mode %v): chmod +x it, then retry", exe, fi.Mode().Perm())
	}
	return exe, nil
}

var (
	childExitRe    = regexp.MustCompile(`child pid=(\d+) exited(?:: (.*))?$`)
	childTimeoutRe = regexp.MustCompile(`child pid=(\d+) timed out`)
)

// parseChildError turns tableflip's error strings into an UpgradeError.
func parseChildError(err error, stderr []string) *UpgradeError {
	e := &UpgradeError{Err: err, Stderr: stderr}
	msg := err.Error()
	if m := childTimeoutRe.FindStringSubmatch(msg); m != nil {
		e.ChildPID, _ = strconv.Atoi(m[1])
		e.TimedOut = true
		e.Exit = "signal: killed"
		return e
	}
	if m := childExitRe.FindStringSubmatch(msg); m != nil {
		e.ChildPID, _ = strconv.Atoi(m[1])
		e.Exit = m[2]
		if e.Exit == "" {
			e.Exit = "exit status 0"
		}
	}
	return e
}
