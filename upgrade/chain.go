package upgrade

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Chain mode: each generation starts the next with tableflip, which passes
// the sockets, and exits once that one has taken over.
//
// Besides tableflip's files, a parent passes its child two more: the
// service's own stdin and stderr. For the time tableflip takes to start the
// child, the parent swaps os.Stdin for its end of the link and os.Stderr
// for a pipe (tableflip gives the child the parent's os.Stdin, os.Stdout
// and os.Stderr), so the child finds the link on fd 0 and writes its
// start-up output through the parent, which keeps the last lines to report
// a failure. The child puts the real stdin back at once, and the real
// stderr once it is ready. Passing the two files once per process, and a
// fresh link per attempt, leaks nothing when an attempt fails.
const (
	stdinFile  = "handoff-stdin"
	stderrFile = "handoff-stderr"
)

// Result is a successful upgrade: the generation that took over.
type Result struct {
	PID        int           `json:"pid"`
	Version    string        `json:"version"`
	Generation int           `json:"generation"`
	Duration   time.Duration `json:"duration_ns"`
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
	// Reason is what the new generation said when it gave up, such as
	// "stopped before it was ready: signal terminated".
	Reason string
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
	case e.Reason != "":
		fmt.Fprintf(&b, "new generation (pid %d) %s", e.ChildPID, e.Reason)
		if e.Exit != "" {
			fmt.Fprintf(&b, " (%s)", e.Exit)
		}
	case e.ChildPID != 0 && e.Exit != "":
		fmt.Fprintf(&b, "new generation (pid %d) exited before it was ready: %s", e.ChildPID, e.Exit)
	case e.ChildPID != 0:
		fmt.Fprintf(&b, "new generation (pid %d) failed: %v", e.ChildPID, e.Err)
	default:
		fmt.Fprintf(&b, "new generation not started: %v", e.Err)
	}
	if len(e.Stderr) > 0 && e.Reason == "" {
		fmt.Fprintf(&b, "; last stderr line: %s", e.Stderr[len(e.Stderr)-1])
	}
	return b.String()
}

func (e *UpgradeError) Unwrap() error { return e.Err }

// successor is a generation that took over from this one, and the link to
// it.
type successor struct {
	Result
	link    *link
	teeDone <-chan struct{}
}

// upstream is the process that started this generation and decides
// whether it takes over: the previous generation, or the supervisor.
type upstream struct {
	kind   string // "previous generation" or "supervisor"
	link   *link
	hello  hello
	log    zerolog.Logger
	stderr *os.File // the service's stderr, put back on fd 2 when ready
	once   sync.Once
	// files are the sockets a supervisor passed, by key, until taken.
	mu    sync.Mutex
	files map[string]*os.File
}

func (up *upstream) send(m message, files ...*os.File) error {
	return up.link.send(m, 5*time.Second, files...)
}

func (up *upstream) linkOrNil() *link {
	if up == nil {
		return nil
	}
	return up.link
}

// restoreStderr points fd 2 back at the service's stderr, ending the pipe
// through the process that started this one.
func (up *upstream) restoreStderr() {
	up.once.Do(func() {
		if up.stderr == nil {
			return
		}
		if err := unix.Dup3(int(up.stderr.Fd()), 2, 0); err != nil {
			up.log.Warn().Err(err).Msg("restore stderr")
		}
		up.stderr.Close()
	})
}

// joinParent is the child's side of chain mode: it takes the link from fd
// 0, puts the real stdin back, and reads the hello.
func joinParent(tf *tableflip.Upgrader) (*upstream, error) {
	stdin, err := tf.File(stdinFile)
	if err != nil {
		return nil, err
	}
	if stdin == nil {
		return nil, errors.New("started by a generation of an older version, which passes no handoff link: " +
			"stop and start the service once to run this version")
	}
	fd, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		stdin.Close()
		return nil, fmt.Errorf("take the link from fd 0: %w", err)
	}
	err = unix.Dup3(int(stdin.Fd()), 0, 0)
	stdin.Close()
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("restore stdin: %w", err)
	}
	l, err := linkFromFile(os.NewFile(uintptr(fd), "handoff-link"))
	if err != nil {
		return nil, err
	}
	m, _, err := l.recvType(10*time.Second, msgHello)
	if err != nil || m.Hello == nil {
		l.close()
		return nil, fmt.Errorf("read hello from the previous generation: %v", err)
	}
	if err := l.send(message{Type: msgJoined, PID: os.Getpid()}, 5*time.Second); err != nil {
		l.close()
		return nil, err
	}
	stderr, err := tf.File(stderrFile)
	if err != nil {
		l.close()
		return nil, err
	}
	return &upstream{kind: "previous generation", link: l, hello: *m.Hello, stderr: stderr}, nil
}

// passStdio gives tableflip the service's stdin and stderr, once per
// process, for every child it starts.
func (u *Upgrader) passStdio() error {
	var err error
	u.stdioOnce.Do(func() {
		if err = u.tf.AddFile(stderrFile, u.stderr); err != nil {
			return
		}
		err = u.tf.AddFile(stdinFile, os.Stdin)
	})
	if err != nil {
		return fmt.Errorf("pass stdin and stderr: %w", err)
	}
	return nil
}

// attemptChain runs one upgrade: check the binary, start it with the
// sockets, answer its ready report, and wait for tableflip's verdict.
func (u *Upgrader) attemptChain(a *attempt) (*successor, UpgradeRecord, error) {
	start := time.Now()
	rec := UpgradeRecord{Source: a.source, StartedAt: start}
	fail := func(uerr *UpgradeError) (*successor, UpgradeRecord, error) {
		rec.Duration = Duration(time.Since(start))
		rec.Error = uerr.Error()
		u.logFailure(uerr, a.source, time.Since(start))
		u.notify.reloadFailed(uerr.Error())
		return nil, rec, uerr
	}

	u.log.Info().Str("source", a.source).Msg("upgrade started")
	u.notify.reloading()
	exe, err := checkBinary()
	if err != nil {
		return fail(&UpgradeError{Err: err})
	}
	if err := u.passStdio(); err != nil {
		return fail(&UpgradeError{Err: err})
	}
	mine, theirs, err := newLinkPair()
	if err != nil {
		return fail(&UpgradeError{Err: err})
	}
	u.regMu.Lock()
	h := hello{
		Generation: u.gen + 1, ParentPID: u.pid, Source: a.source,
		RequestedAt: start, Upgrades: a.upgrades, Listeners: u.listenKeys,
	}
	u.regMu.Unlock()
	if err := mine.send(message{Type: msgHello, Hello: &h}, time.Second); err != nil {
		theirs.Close()
		mine.close()
		return fail(&UpgradeError{Err: err})
	}
	r, w, err := os.Pipe()
	if err != nil {
		theirs.Close()
		mine.close()
		return fail(&UpgradeError{Err: err})
	}
	t := startTee(r, u.stderr)

	// os.Stdin and os.Stderr are read by tableflip's goroutine only while
	// Upgrade runs, which the channel operations inside Upgrade order
	// after these writes and before its return, after which they are put
	// back. (Putting them back as soon as the child says it runs would be
	// a data race: nothing in Go orders that with tableflip's read.)
	realStdin := os.Stdin
	os.Stdin, os.Stderr = theirs, w
	restored := false
	restore := func() {
		if !restored {
			restored = true
			os.Stdin, os.Stderr = realStdin, u.stderr
			theirs.Close()
			w.Close()
		}
	}
	defer restore()
	resC := make(chan error, 1)
	go func() { resC <- u.upgradeOnce() }() // ends when tableflip's Upgrade returns

	var (
		childPID  int
		gaveUp    string
		rep       *report
		committed bool
		in        = mine.in
		abort     = a.abort
	)
	for {
		select {
		case m, ok := <-in:
			if !ok || m.err != nil {
				in = nil // the child is gone; tableflip says how
				continue
			}
			closeFiles(m.files)
			switch m.msg.Type {
			case msgJoined:
				childPID = m.msg.PID
			case msgStateRequest:
				u.wg.Add(1)
				go func() { // ends once the state is sent
					defer u.wg.Done()
					u.handOverState(mine)
				}()
			case msgFailed:
				gaveUp = m.msg.Reason
			case msgReady:
				rep = m.msg.Ready
				if u.askCommit() {
					committed = mine.send(message{Type: msgCommit}, time.Second) == nil
				} else {
					mine.send(message{Type: msgAbort, Reason: "the generation being replaced is stopping"}, time.Second)
					gaveUp = "was called off: the generation being replaced is stopping"
				}
			}
		case <-abort:
			abort = nil
			if !committed {
				mine.send(message{Type: msgAbort, Reason: "the generation being replaced is stopping"}, time.Second)
				gaveUp = "was called off: the generation being replaced is stopping"
			}
		case err := <-resC:
			restore()
			if err != nil {
				mine.close()
				// tableflip keeps its ends of the child's readiness pipes
				// until they are garbage collected; collect them now, so
				// failed upgrades leak no descriptor.
				runtime.GC()
				uerr := parseChildError(err, t.lines())
				if uerr.ChildPID == 0 {
					uerr.ChildPID = childPID
				}
				uerr.Reason = gaveUp
				return fail(uerr)
			}
			if rep == nil {
				// tableflip saw the child ready without our protocol;
				// it has taken over anyway, only its details are missing.
				u.log.Warn().Msg("new generation sent no ready report")
				rep = &report{PID: childPID, Generation: u.gen + 1}
			}
			succ := &successor{
				Result: Result{
					PID: rep.PID, Version: rep.Version, Generation: rep.Generation,
					Duration: time.Since(start),
				},
				link:    mine,
				teeDone: t.done,
			}
			rec.OK = true
			rec.Duration = Duration(succ.Duration)
			rec.NewPID, rec.NewVersion, rec.NewGeneration = succ.PID, succ.Version, succ.Generation
			u.log.Info().Str("source", a.source).Str("binary", exe).Int("new_pid", succ.PID).
				Str("new_version", succ.Version).Int("new_generation", succ.Generation).
				Float64("time_to_ready_ms", ms(succ.Duration)).Msg("child ready")
			u.notify.handedOver(succ.PID)
			return succ, rec, nil
		}
	}
}

// logFailure logs a failed upgrade: a Warn, since the old generation keeps
// serving.
func (u *Upgrader) logFailure(uerr *UpgradeError, source string, d time.Duration) {
	logUpgradeFailure(u.log, uerr, source, d, u.opts.UpgradeTimeout)
}

func logUpgradeFailure(log zerolog.Logger, uerr *UpgradeError, source string, d, timeout time.Duration) {
	ev := log.Warn().Err(uerr).Str("source", source).Float64("duration_ms", ms(d))
	if uerr.ChildPID != 0 {
		ev = ev.Int("child_pid", uerr.ChildPID)
	}
	if uerr.Exit != "" {
		ev = ev.Str("exit_status", uerr.Exit)
	}
	if uerr.TimedOut {
		ev = ev.Bool("timed_out", true).Float64("upgrade_timeout_ms", ms(timeout))
	}
	if len(uerr.Stderr) > 0 {
		ev = ev.Strs("stderr_tail", uerr.Stderr)
	}
	ev.Msg("upgrade failed: old generation keeps serving")
}

// checkBinary finds the binary the next generation runs, the way tableflip
// and exec do (os.Args[0], looked up like exec.LookPath when it has no
// slash), and checks that it is an executable file, so that a missing
// binary is a clear error rather than a failed fork.
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
