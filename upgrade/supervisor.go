package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Supervisor mode. The process a supervisor (systemd, a container
// runtime, a shell) started stays for the life of the service: it holds
// the listening sockets and starts every generation as its child, with the
// sockets inherited. A new generation takes over exactly as in chain mode
// (ready report, commit), after which the supervisor tells the old one to
// drain and exit. Its pid never changes, so systemd needs no MAINPID= and
// waits for it on stop, a container's PID 1 can hot-restart, and a
// terminal keeps its foreground process. It stays small: no handlers, no
// database, only sockets, children and their links. When the binary at its
// path has changed, an upgrade also replaces the supervisor's own code, by
// execve in place (same pid, same sockets, same children). A message a
// generation sent in the instant of that execve may be lost; every
// generation sends its pending ones again when the new code says hello
// (msgSupervisor). SIGHUP and SIGINT are ignored across the execve, so one
// arriving then is lost, not fatal; a SIGTERM in the few milliseconds
// between the execve and the new code's signal.Notify kills the supervisor
// (the Go runtime installs its own SIGTERM handler first), and the
// generations then stop.

// Environment of the supervisor's own processes.
const (
	// envSupervisorState names the fd of a supervisor's state across its
	// execve in place.
	envSupervisorState = "HANDOFF_SUPERVISOR_STATE"
)

// Supervisor defaults.
const (
	// DefaultRestartBackoff is the first wait before a crashed generation
	// is restarted (SupervisorOptions.RestartOnCrash); it doubles up to
	// MaxRestartBackoff, and starts again once a generation has served
	// for a minute.
	DefaultRestartBackoff = time.Second
	MaxRestartBackoff     = 30 * time.Second
)

// SupervisorOptions configure Supervise.
type SupervisorOptions struct {
	// Logger receives the supervisor's events, each with pid and
	// generation 0. Zero means no logs.
	Logger zerolog.Logger
	// Version names this build in logs and in the generations' status.
	Version string
	// UpgradeTimeout bounds how long a new generation may take to become
	// ready, probation included, before it is killed. Zero means
	// DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// StopTimeout bounds how long a stop waits for the generations to
	// exit before it kills them. Zero means the serving generation's
	// shutdown delay and drain timeout, plus a minute for its cleanup.
	StopTimeout time.Duration
	// RestartOnCrash restarts a serving generation that exits without
	// being asked to, after DefaultRestartBackoff, doubling up to
	// MaxRestartBackoff. The listening sockets stay open meanwhile, so
	// connections queue rather than being refused. Zero means the
	// supervisor exits with status 1 when that happens, and whoever
	// started it decides (systemd's Restart=).
	RestartOnCrash bool
}

// ErrServiceFailed is what Supervise returns when the service ended on its
// own: the first generation failed to start, or the serving one exited
// unexpectedly and RestartOnCrash is off.
var ErrServiceFailed = errors.New("the service failed")

// Supervise runs this process as the supervisor of the service, if it is
// not itself a generation: call it first in main, with the same binary
// serving as both. In the supervisor it returns true once the service has
// stopped (err says how: nil for a graceful stop, ErrForced after a second
// stop signal, ErrServiceFailed); in a generation it returns false at once
// and the program goes on to New.
func Supervise(ctx context.Context, o SupervisorOptions) (isSupervisor bool, err error) {
	if os.Getenv(envSupervisor) != "" {
		return false, nil
	}
	if o.UpgradeTimeout <= 0 {
		o.UpgradeTimeout = DefaultUpgradeTimeout
	}
	s := &supervisor{
		opts:    o,
		pid:     os.Getpid(),
		started: time.Now(),
		gens:    map[int]*gen{},
		sigC:    make(chan os.Signal, 64),
		chldC:   make(chan os.Signal, 1),
		msgs:    make(chan genMsg, 64),
		done:    make(chan struct{}),
		nextGen: 1,
		backoff: DefaultRestartBackoff,
	}
	// Signals first: SIGHUP's default action would kill a process still
	// starting.
	signal.Notify(s.sigC, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(s.chldC, syscall.SIGCHLD)
	defer signal.Stop(s.sigC)
	defer signal.Stop(s.chldC)
	markTerminal()
	s.log = o.Logger.With().Int("pid", s.pid).Int("generation", 0).Str("component", "supervisor").Logger()
	s.notify = newNotifier(s.log)
	if fd := os.Getenv(envSupervisorState); fd != "" {
		os.Unsetenv(envSupervisorState)
		if err := s.restore(fd); err != nil {
			// The generations run on without a supervisor; nothing
			// better can be done from here.
			s.log.Error().Err(err).Msg("supervisor: restore after replacing its own binary")
			return true, err
		}
	} else {
		s.log.Info().Str("version", o.Version).Msg("supervisor starting")
		s.takeActivated()
		s.start("start", nil)
	}
	return true, s.run(ctx)
}

type supervisor struct {
	opts    SupervisorOptions
	log     zerolog.Logger
	pid     int
	started time.Time
	execs   int
	notify  *notifier
	sigC    chan os.Signal
	chldC   chan os.Signal
	msgs    chan genMsg
	done    chan struct{} // closed when run has returned

	socks    []*heldSocket
	gens     map[int]*gen
	serving  *gen
	starting *gen
	nextGen  int

	upgrades    UpgradeCounts
	lastUpgrade *UpgradeRecord
	lastDrain   *DrainRecord
	again       bool
	stateFor    *gen // the generation waiting for the serving one's state

	stopping  bool
	stops     int
	exitErr   error
	stopTimer <-chan time.Time
	backoff   time.Duration
	restartAt <-chan time.Time
	unextend  func()
}

// heldSocket is a listening socket the supervisor holds for every
// generation.
type heldSocket struct {
	key  string // "network address", as Listen keys it
	file *os.File
}

// gen is one generation, as the supervisor sees it.
type gen struct {
	pid      int
	number   int
	version  string
	link     *link
	state    string // "starting", "serving", "draining"
	source   string
	started  time.Time
	servedAt time.Time
	tee      *tee
	timer    *time.Timer
	timedOut bool
	gaveUp   string
	report   *report
	waiters  []waiter
}

// waiter is an upgrade request from a generation, answered by ID.
type waiter struct {
	g  *gen
	id uint64
}

type genMsg struct {
	g  *gen
	in inbound
}

// info is what the generations are told of their supervisor.
func (s *supervisor) info() *SupervisorInfo {
	return &SupervisorInfo{PID: s.pid, Version: s.opts.Version, StartedAt: s.started, Execs: s.execs}
}

// run is the supervisor's loop. It returns once every generation has
// exited after a stop, or the service failed.
func (s *supervisor) run(ctx context.Context) error {
	defer close(s.done)
	done := ctx.Done()
	s.reap()
	for {
		if s.stopping && len(s.gens) == 0 {
			s.closeSockets()
			s.unextendNow()
			s.log.Info().Float64("uptime_ms", ms(time.Since(s.started))).Msg("supervisor exit")
			return s.exitErr
		}
		select {
		case sig := <-s.sigC:
			s.onSignal(sig)
		case <-s.chldC:
			s.reap()
		case m := <-s.msgs:
			s.onMessage(m.g, m.in)
		case <-done:
			done = nil
			s.stop("context canceled")
		case <-s.stopTimer:
			s.stopTimer = nil
			for pid, g := range s.gens {
				s.log.Error().Int("child_pid", pid).Int("child_generation", g.number).
					Msg("generation did not exit in time after the stop: killing it")
				syscall.Kill(pid, syscall.SIGKILL)
			}
		case <-s.restartAt:
			s.restartAt = nil
			if !s.stopping && s.serving == nil && s.starting == nil {
				s.start("crash", nil)
			}
		}
	}
}

func (s *supervisor) onSignal(sig os.Signal) {
	if sig == syscall.SIGHUP {
		s.request("signal", nil)
		return
	}
	s.stops++
	if s.stops > 1 {
		s.log.Warn().Str("signal", sig.String()).Msg("second stop signal: killing the generations and exiting now")
		for pid := range s.gens {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		s.exitErr = ErrForced
		s.stopping = true
		return
	}
	s.stop("signal " + sig.String())
}

// stop stops the service: the serving generation drains and cleans up,
// one still starting is called off, and the supervisor exits once all
// have exited.
func (s *supervisor) stop(reason string) {
	if s.stopping {
		return
	}
	s.stopping = true
	s.log.Info().Str("reason", reason).Msg("supervisor stopping the service")
	s.notify.stopping()
	budget := s.opts.StopTimeout
	if budget == 0 {
		budget = DefaultDrainTimeout + time.Minute
		if g := s.serving; g != nil && g.report != nil {
			budget = g.report.ShutdownDelay + g.report.DrainTimeout + time.Minute
		}
	}
	s.unextend = s.notify.extendDuring(budget)
	s.stopTimer = time.After(budget)
	if g := s.starting; g != nil {
		g.link.send(message{Type: msgAbort, Reason: "the service is stopping"}, time.Second)
	}
	if g := s.serving; g != nil {
		if err := g.link.send(message{Type: msgStop, Reason: reason}, time.Second); err != nil {
			syscall.Kill(g.pid, syscall.SIGTERM)
		}
	}
}

func (s *supervisor) unextendNow() {
	if s.unextend != nil {
		s.unextend()
		s.unextend = nil
	}
}

// request asks for an upgrade, from a signal (w nil) or a generation.
func (s *supervisor) request(source string, w *waiter) {
	switch {
	case s.stopping:
		s.reply(w, Result{}, ErrStopping)
	case s.starting != nil && w != nil:
		s.reply(w, Result{}, ErrUpgradeInProgress)
	case s.starting != nil:
		if !s.again {
			s.log.Info().Str("source", source).Msg("upgrade queued: another upgrade is in progress")
		}
		s.again = true
	default:
		s.log.Info().Str("source", source).Msg("upgrade requested")
		s.start(source, w)
	}
}

func (s *supervisor) reply(w *waiter, res Result, err error) {
	if w == nil {
		return
	}
	m := message{Type: msgUpgradeResult, ID: w.id, Failure: toWire(err)}
	if err == nil {
		m.Result = &res
	}
	w.g.link.send(m, time.Second)
}

// start starts the next generation with the sockets.
func (s *supervisor) start(source string, w *waiter) {
	now := time.Now()
	upgrade := s.serving != nil
	if upgrade {
		s.log.Info().Str("source", source).Msg("upgrade started")
		s.notify.reloading()
	}
	fail := func(err error) {
		uerr := &UpgradeError{Err: err}
		s.failed(&gen{source: source, started: now, waiters: waitersOf(w)}, uerr)
		if s.serving == nil && s.starting == nil && !s.opts.RestartOnCrash {
			s.exitErr = fmt.Errorf("%w: %s", ErrServiceFailed, uerr.Error())
			s.stopping = true
		} else if s.serving == nil && s.starting == nil {
			s.scheduleRestart()
		}
	}
	exe, err := checkBinary()
	if err != nil {
		fail(err)
		return
	}
	mine, theirs, err := newLinkPair()
	if err != nil {
		fail(err)
		return
	}
	defer theirs.Close()
	r, pw, err := os.Pipe()
	if err != nil {
		mine.close()
		fail(err)
		return
	}
	defer pw.Close()
	files := []uintptr{os.Stdin.Fd(), os.Stdout.Fd(), pw.Fd(), theirs.Fd(), os.Stderr.Fd()}
	h := hello{
		Generation: s.nextGen, ParentPID: s.pid, Source: source, RequestedAt: now,
		Upgrades: s.upgrades, StderrFD: 4, LastDrain: s.lastDrain, Supervisor: s.info(),
	}
	for _, hs := range s.socks {
		fd, err := rawFD(hs.file)
		if err != nil {
			continue
		}
		h.Listeners = append(h.Listeners, hs.key)
		h.FDs = append(h.FDs, len(files))
		files = append(files, uintptr(fd))
	}
	pid, err := syscall.ForkExec(exe, os.Args, &syscall.ProcAttr{
		Env:   append(childEnv(), envSupervisor+"=3"),
		Files: files,
	})
	if err != nil {
		r.Close()
		mine.close()
		fail(fmt.Errorf("start %s: %w", exe, err))
		return
	}
	g := &gen{
		pid: pid, number: s.nextGen, link: mine, state: "starting", source: source,
		started: now, tee: startTee(r, os.Stderr), waiters: waitersOf(w),
	}
	s.gens[pid] = g
	s.starting = g
	if err := mine.send(message{Type: msgHello, Hello: &h}, time.Second); err != nil {
		s.log.Warn().Err(err).Int("child_pid", pid).Msg("send hello")
	}
	s.forward(g)
	g.timer = time.AfterFunc(s.opts.UpgradeTimeout, func() {
		s.deliver(genMsg{g, inbound{msg: message{Type: "timeout"}}})
	})
	s.log.Info().Int("child_pid", pid).Int("child_generation", g.number).Str("binary", exe).Msg("generation started")
}

// forward passes g's messages to the loop, until its link ends.
func (s *supervisor) forward(g *gen) {
	go func() { // ends when the link does, or the supervisor has returned
		for in := range g.link.in {
			if !s.deliver(genMsg{g, in}) {
				closeFiles(in.files)
			}
		}
	}()
}

// deliver hands m to the loop, unless the loop has returned.
func (s *supervisor) deliver(m genMsg) bool {
	select {
	case s.msgs <- m:
		return true
	case <-s.done:
		return false
	}
}

func waitersOf(w *waiter) []waiter {
	if w == nil {
		return nil
	}
	return []waiter{*w}
}

// childEnv is this process's environment less what is the supervisor's
// alone: systemd's notify socket and activation, tableflip's marker.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "NOTIFY_SOCKET="), strings.HasPrefix(kv, "LISTEN_"),
			strings.HasPrefix(kv, "TABLEFLIP_"), strings.HasPrefix(kv, envSupervisor+"="),
			strings.HasPrefix(kv, envSupervisorState+"="), strings.HasPrefix(kv, "WATCHDOG_"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (s *supervisor) onMessage(g *gen, in inbound) {
	defer func() { closeFiles(in.files) }() // those not kept
	if in.err != nil {
		return // the generation exits; reap says how
	}
	m := in.msg
	switch m.Type {
	case "timeout":
		if g == s.starting {
			g.timedOut = true
			s.log.Warn().Int("child_pid", g.pid).Float64("upgrade_timeout_ms", ms(s.opts.UpgradeTimeout)).
				Msg("new generation not ready in time: killing it")
			syscall.Kill(g.pid, syscall.SIGKILL)
		}
	case msgAdopt:
		if len(in.files) == 1 && m.Key != "" {
			s.hold(m.Key, in.files[0])
			in.files = nil
		}
	case msgStateRequest:
		s.relayStateRequest(g)
	case msgState:
		if to := s.stateFor; to != nil && g == s.serving {
			to.link.send(m, 5*time.Second)
			if !m.More {
				s.stateFor = nil
			}
		}
	case msgFailed:
		g.gaveUp = m.Reason
	case msgReady:
		g.report = m.Ready
		if g != s.starting || s.stopping {
			g.link.send(message{Type: msgAbort, Reason: "the service is stopping"}, time.Second)
			return
		}
		s.commit(g)
	case msgUpgrade:
		w := &waiter{g: g, id: m.ID}
		if m.ID == 0 {
			w = nil
		}
		s.request(sourceOr(m.Source, "api"), w)
	case msgStopping:
		if g == s.serving {
			s.log.Info().Int("child_pid", g.pid).Str("reason", m.Reason).Msg("the serving generation stops the service")
			s.stop("the serving generation stopped: " + m.Reason)
		}
	case msgStop:
		s.stop("stop passed on by generation " + strconv.Itoa(g.number))
	case msgDrained:
		if m.Drain != nil {
			s.lastDrain = m.Drain
			if sv := s.serving; sv != nil && sv != g {
				sv.link.send(message{Type: msgDrained, Drain: m.Drain}, time.Second)
			}
		}
	}
}

func sourceOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// hold keeps a socket a generation bound, for the next ones.
func (s *supervisor) hold(key string, f *os.File) {
	for _, hs := range s.socks {
		if hs.key == key {
			hs.file.Close()
			hs.file = f
			return
		}
	}
	s.socks = append(s.socks, &heldSocket{key: key, file: f})
}

// relayStateRequest asks the serving generation for the state a starting
// one wants; with none serving, the answer is no state.
func (s *supervisor) relayStateRequest(g *gen) {
	sv := s.serving
	if sv == nil || s.stateFor != nil {
		g.link.sendState(nil, nil)
		return
	}
	s.stateFor = g
	if err := sv.link.send(message{Type: msgStateRequest}, time.Second); err != nil {
		s.stateFor = nil
		g.link.sendState(nil, fmt.Errorf("the serving generation did not take the request: %w", err))
	}
}

// commit makes g the serving generation and tells the previous one to
// drain.
func (s *supervisor) commit(g *gen) {
	if err := g.link.send(message{Type: msgCommit}, time.Second); err != nil {
		s.log.Warn().Err(err).Int("child_pid", g.pid).Msg("commit")
		return // it exits; reap reports the failure
	}
	g.timer.Stop()
	old := s.serving
	s.starting, s.serving = nil, g
	// A generation is one more than the one it replaced: a failed attempt
	// does not use up a number, as in chain mode.
	s.nextGen = g.number + 1
	g.state, g.servedAt = "serving", time.Now()
	g.version = g.report.Version
	used := map[string]bool{}
	for _, k := range g.report.Used {
		used[k] = true
	}
	kept := s.socks[:0]
	for _, hs := range s.socks {
		if used[hs.key] {
			kept = append(kept, hs)
			continue
		}
		s.log.Info().Str("socket", hs.key).Msg("closing a socket the new generation did not ask for")
		hs.file.Close()
		unlinkUnixSocket(hs.key)
	}
	s.socks = kept
	d := time.Since(g.started)
	res := Result{PID: g.pid, Version: g.version, Generation: g.number, Duration: d}
	if old != nil || g.source == "crash" {
		s.upgrades.Succeeded++
		s.lastUpgrade = &UpgradeRecord{
			OK: true, Source: g.source, StartedAt: g.started, Duration: Duration(d),
			NewPID: g.pid, NewVersion: g.version, NewGeneration: g.number,
		}
	}
	s.log.Info().Str("source", g.source).Int("new_pid", g.pid).Str("new_version", g.version).
		Int("new_generation", g.number).Float64("time_to_ready_ms", ms(d)).Msg("child ready")
	status := fmt.Sprintf("STATUS=serving, generation %d, pid %d", g.number, g.pid)
	if old != nil {
		old.state = "draining"
		if err := old.link.send(message{Type: msgDrain}, time.Second); err != nil {
			syscall.Kill(old.pid, syscall.SIGTERM)
		}
		status += " (upgraded)"
	}
	var replies []pendingReply
	for _, w := range g.waiters {
		replies = append(replies, pendingReply{PID: w.g.pid, ID: w.id, Result: res})
	}
	g.waiters = nil
	if s.again {
		s.finishCommit(replies, status)
		s.again = false
		s.request("queued", nil)
		return
	}
	// When the binary changed, the supervisor replaces its own code before
	// it answers: whoever asked (systemctl reload, a deploy script) hears
	// "upgraded" only once the whole service runs the new binary, and a
	// stop that follows at once does not meet the execve.
	s.maybeReexec(g, replies, status)
	s.finishCommit(replies, status)
}

// pendingReply is an answer to an upgrade request, kept across an execve.
type pendingReply struct {
	PID    int    `json:"pid"`
	ID     uint64 `json:"id"`
	Result Result `json:"result"`
}

// finishCommit answers whoever asked for the upgrade, and systemd.
func (s *supervisor) finishCommit(replies []pendingReply, status string) {
	for _, r := range replies {
		if g := s.gens[r.PID]; g != nil {
			s.reply(&waiter{g: g, id: r.ID}, r.Result, nil)
		}
	}
	s.notify.send("READY=1", status)
}

// failed reports an upgrade that did not take over.
func (s *supervisor) failed(g *gen, uerr *UpgradeError) {
	s.upgrades.Failed++
	rec := &UpgradeRecord{Source: g.source, StartedAt: g.started, Duration: Duration(time.Since(g.started)), Error: uerr.Error()}
	s.lastUpgrade = rec
	logUpgradeFailure(s.log, uerr, g.source, time.Since(g.started), s.opts.UpgradeTimeout)
	for _, w := range g.waiters {
		s.reply(&w, Result{}, uerr)
	}
	if s.serving != nil {
		s.notify.reloadFailed(uerr.Error())
	}
	if s.again && !s.stopping {
		s.again = false
		s.request("queued", nil)
	}
}

// reap collects every child that exited: generations, and, as PID 1 of a
// container, any orphan that was reparented to this process.
func (s *supervisor) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if g := s.gens[pid]; g != nil {
			delete(s.gens, pid)
			s.exited(g, exitText(ws))
		}
	}
}

func exitText(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// exited acts on the end of generation g.
func (s *supervisor) exited(g *gen, status string) {
	if g.timer != nil {
		g.timer.Stop()
	}
	go g.link.close() // its reader's last messages are dropped
	if s.stateFor == g {
		s.stateFor = nil
	}
	switch {
	case g == s.starting:
		s.starting = nil
		uerr := &UpgradeError{ChildPID: g.pid, Exit: status, TimedOut: g.timedOut, Reason: g.gaveUp, Stderr: g.tee.lines(),
			Err: errors.New("exited before it was ready")}
		if s.serving == nil && !s.stopping {
			s.log.Error().Err(uerr).Strs("stderr_tail", uerr.Stderr).Msg("the first generation failed to start")
			s.failed(g, uerr)
			if g.source != "crash" || !s.opts.RestartOnCrash {
				s.exitErr = fmt.Errorf("%w: %s", ErrServiceFailed, uerr.Error())
				s.stopping = true
				return
			}
			s.scheduleRestart()
			return
		}
		s.failed(g, uerr)
	case g == s.serving:
		s.serving = nil
		if s.stopping {
			s.log.Info().Int("child_pid", g.pid).Int("child_generation", g.number).Str("exit_status", status).Msg("generation exited")
			if status != "exit status 0" && s.exitErr == nil {
				s.exitErr = fmt.Errorf("%w: the last generation ended with %s", ErrServiceFailed, status)
			}
			return
		}
		s.log.Error().Int("child_pid", g.pid).Int("child_generation", g.number).Str("exit_status", status).
			Msg("the serving generation exited unexpectedly")
		s.notify.send("STATUS=the serving generation exited unexpectedly (" + status + ")")
		switch {
		case s.starting != nil:
			// The one starting takes over when ready.
		case s.opts.RestartOnCrash:
			if time.Since(g.servedAt) > time.Minute {
				s.backoff = DefaultRestartBackoff
			}
			s.scheduleRestart()
		default:
			s.exitErr = fmt.Errorf("%w: the serving generation (pid %d) ended with %s", ErrServiceFailed, g.pid, status)
			s.stopping = true
		}
	default:
		s.log.Info().Int("child_pid", g.pid).Int("child_generation", g.number).Str("exit_status", status).Msg("generation exited")
	}
}

func (s *supervisor) scheduleRestart() {
	s.log.Warn().Float64("backoff_ms", ms(s.backoff)).Msg("restarting the service after a crash")
	s.restartAt = time.After(s.backoff)
	s.backoff = min(2*s.backoff, MaxRestartBackoff)
}

// takeActivated holds the sockets systemd passed by socket activation,
// under their names, for ListenNamed.
func (s *supervisor) takeActivated() {
	for _, f := range activation.Files(true) {
		network := "tcp"
		if ln, err := net.FileListener(f); err == nil {
			network = ln.Addr().Network()
			ln.Close()
		}
		s.socks = append(s.socks, &heldSocket{key: network + " " + activatedKey(f.Name()), file: f})
	}
}

// closeSockets closes every held socket once the service has stopped,
// and removes the files of the unix sockets the service created (not
// systemd's).
func (s *supervisor) closeSockets() {
	for _, hs := range s.socks {
		hs.file.Close()
		if !strings.Contains(hs.key, " systemd:") {
			unlinkUnixSocket(hs.key)
		}
	}
	s.socks = nil
}

// unlinkUnixSocket removes the socket file of a "unix PATH" key.
func unlinkUnixSocket(key string) {
	network, path, ok := strings.Cut(key, " ")
	if !ok || !strings.HasPrefix(network, "unix") || strings.HasPrefix(path, "@") {
		return
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
}

// The supervisor's state across its execve in place.
type supervisorState struct {
	Version     string         `json:"version"`
	StartedAt   time.Time      `json:"started_at"`
	Execs       int            `json:"execs"`
	NextGen     int            `json:"next_gen"`
	Upgrades    UpgradeCounts  `json:"upgrades"`
	LastUpgrade *UpgradeRecord `json:"last_upgrade,omitempty"`
	LastDrain   *DrainRecord   `json:"last_drain,omitempty"`
	Sockets     []heldState    `json:"sockets"`
	Gens        []genState     `json:"gens"`
	// Replies and Status are the answers of the upgrade that led to the
	// execve, which the new code gives.
	Replies []pendingReply `json:"replies,omitempty"`
	Status  string         `json:"status,omitempty"`
}

type heldState struct {
	Key string `json:"key"`
	FD  int    `json:"fd"`
}

type genState struct {
	PID      int       `json:"pid"`
	Number   int       `json:"number"`
	Version  string    `json:"version"`
	State    string    `json:"state"`
	LinkFD   int       `json:"link_fd"`
	ServedAt time.Time `json:"served_at"`
	Report   *report   `json:"report,omitempty"`
}

// maybeReexec replaces the supervisor's code with the binary at its path,
// in place, when that binary changed: g, from the same binary, just took
// over, which shows it starts. Nothing runs concurrently here, and no
// generation is starting.
func (s *supervisor) maybeReexec(g *gen, replies []pendingReply, status string) {
	exe, err := checkBinary()
	if err != nil || !binaryChanged(exe) {
		return
	}
	// The new generation's start-up output ended when it became ready.
	select {
	case <-g.tee.done:
	case <-time.After(2 * time.Second):
	}
	st := supervisorState{
		Version: s.opts.Version, StartedAt: s.started, Execs: s.execs + 1, NextGen: s.nextGen,
		Upgrades: s.upgrades, LastUpgrade: s.lastUpgrade, LastDrain: s.lastDrain,
		Replies: replies, Status: status,
	}
	var keep []int
	for _, hs := range s.socks {
		fd, err := rawFD(hs.file)
		if err != nil {
			s.log.Warn().Err(err).Msg("supervisor self-upgrade: skipped")
			return
		}
		st.Sockets = append(st.Sockets, heldState{Key: hs.key, FD: fd})
		keep = append(keep, fd)
	}
	for _, c := range s.gens {
		fd, err := connFD(c.link.conn)
		if err != nil {
			s.log.Warn().Err(err).Msg("supervisor self-upgrade: skipped")
			return
		}
		st.Gens = append(st.Gens, genState{PID: c.pid, Number: c.number, Version: c.version, State: c.state,
			LinkFD: fd, ServedAt: c.servedAt, Report: c.report})
		keep = append(keep, fd)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return
	}
	mfd, err := unix.MemfdCreate("handoff-supervisor-state", 0)
	if err != nil {
		s.log.Warn().Err(err).Msg("supervisor self-upgrade: skipped")
		return
	}
	mf := os.NewFile(uintptr(mfd), "state")
	defer mf.Close()
	if _, err := mf.Write(b); err != nil {
		s.log.Warn().Err(err).Msg("supervisor self-upgrade: skipped")
		return
	}
	for _, fd := range keep {
		setCloexec(fd, false)
	}
	s.log.Info().Str("binary", exe).Str("old_version", s.opts.Version).Msg("supervisor replacing its own binary in place")
	// SIGHUP and SIGINT ignored across the execve survive it until the new
	// code asks for them: one arriving in between is lost, not fatal.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT)
	env := append(os.Environ(), envSupervisorState+"="+strconv.Itoa(mfd))
	err = syscall.Exec(exe, os.Args, env)
	// Still here: the old code runs on.
	signal.Notify(s.sigC, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	for _, fd := range keep {
		setCloexec(fd, true)
	}
	s.log.Warn().Err(err).Msg("supervisor self-upgrade failed: it keeps running its old binary")
}

// binaryChanged reports whether the file at exe is not the one this
// process runs.
func binaryChanged(exe string) bool {
	var a, b unix.Stat_t
	if unix.Stat(exe, &a) != nil || unix.Stat("/proc/self/exe", &b) != nil {
		return false
	}
	return a.Dev != b.Dev || a.Ino != b.Ino
}

func connFD(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return 0, err
	}
	return fd, nil
}

func setCloexec(fd int, on bool) {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return
	}
	if on {
		flags |= unix.FD_CLOEXEC
	} else {
		flags &^= unix.FD_CLOEXEC
	}
	unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags)
}

// restore takes over the state the previous code of this supervisor left.
func (s *supervisor) restore(fdText string) error {
	fd, err := strconv.Atoi(fdText)
	if err != nil {
		return fmt.Errorf("%s=%q: %w", envSupervisorState, fdText, err)
	}
	f := os.NewFile(uintptr(fd), "state")
	f.Seek(0, io.SeekStart)
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	f.Close()
	if err != nil {
		return err
	}
	var st supervisorState
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	s.started, s.execs, s.nextGen = st.StartedAt, st.Execs, st.NextGen
	s.upgrades, s.lastUpgrade, s.lastDrain = st.Upgrades, st.LastUpgrade, st.LastDrain
	for _, h := range st.Sockets {
		setCloexec(h.FD, true)
		s.socks = append(s.socks, &heldSocket{key: h.Key, file: os.NewFile(uintptr(h.FD), h.Key)})
	}
	for _, gs := range st.Gens {
		setCloexec(gs.LinkFD, true)
		l, err := linkFromFile(os.NewFile(uintptr(gs.LinkFD), "handoff-link"))
		if err != nil {
			return err
		}
		g := &gen{pid: gs.PID, number: gs.Number, version: gs.Version, state: gs.State, link: l,
			servedAt: gs.ServedAt, report: gs.Report, tee: &tee{done: closedChan()}}
		s.gens[g.pid] = g
		if g.state == "serving" {
			s.serving = g
		}
		s.forward(g)
	}
	s.log.Info().Str("old_version", st.Version).Str("version", s.opts.Version).Int("execs", s.execs).
		Msg("supervisor replaced its own binary")
	// The answers first: a generation repeats, on hearing the new code's
	// hello, any request still unanswered.
	s.finishCommit(st.Replies, st.Status)
	for _, g := range s.gens {
		g.link.send(message{Type: msgSupervisor, Supervisor: s.info()}, time.Second)
	}
	return nil
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
