package upgrade

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/coreos/go-systemd/v22/activation"
	"github.com/rs/zerolog"
)

// How a generation hands over, as Status.Mode says.
const (
	modeChain      = "chain"
	modeSupervised = "supervised"
	modeStandalone = "standalone"
)

// Upgrader runs one generation of a service. Create it with New.
type Upgrader struct {
	opts      Options
	log       zerolog.Logger // with pid and generation
	mode      string
	pid       int
	parentPID int
	gen       int
	started   time.Time
	stderr    *os.File            // the service's stderr
	tf        *tableflip.Upgrader // chain mode only
	up        *upstream           // who started this generation; nil for the first
	pid1      bool
	notify    *notifier
	// activated are the sockets systemd passed by socket activation, by
	// FileDescriptorName; only a first generation has any.
	activated map[string]*os.File

	stdioOnce sync.Once // chain mode: stdin and stderr passed to tableflip

	// Registration, closed by Ready.
	regMu      sync.Mutex
	regClosed  bool
	servers    []*serving
	listenKeys []string // "network address" of every socket, for the next hello
	cleanups   []cleanup

	sigC      chan os.Signal
	pipeC     chan os.Signal
	events    chan func()
	loopDone  chan struct{} // closed when the lifecycle goroutine has returned
	readyOnce sync.Once
	readyErr  error
	readyC    chan struct{} // closed once this generation serves (took over)
	stopC     chan struct{} // closed when the generation stops or hands over
	drainingC chan struct{} // closed when the drain begins
	finished  chan struct{} // closed when drain and cleanup are done
	forcedC   chan struct{} // closed at a second stop signal
	prevGone  chan struct{} // closed when the previous generation has exited
	wg        sync.WaitGroup
	snap      atomic.Pointer[Status] // published by the lifecycle goroutine
	handedOff atomic.Bool            // this generation handed over to a successor
	runErr    error                  // set before finished or forcedC is closed

	lc lifecycle // owned by the lifecycle goroutine
}

// New creates the Upgrader of this process. Only one may exist per process
// unless Options.Standalone is set. A new generation learns its generation
// number from the process that started it here, so create the logger for
// the rest of the program from Logger afterwards.
func New(opts Options) (*Upgrader, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	u := &Upgrader{
		opts:      opts,
		pid:       os.Getpid(),
		gen:       1,
		started:   time.Now(),
		stderr:    os.Stderr,
		sigC:      make(chan os.Signal, 64),
		pipeC:     make(chan os.Signal, 1),
		events:    make(chan func()),
		loopDone:  make(chan struct{}),
		readyC:    make(chan struct{}),
		stopC:     make(chan struct{}),
		drainingC: make(chan struct{}),
		finished:  make(chan struct{}),
		forcedC:   make(chan struct{}),
		prevGone:  make(chan struct{}),
	}
	u.pid1 = u.pid == 1
	// Listen for signals before anything else: SIGHUP's default action
	// would kill a process still starting.
	if !opts.IgnoreSignals {
		signal.Notify(u.sigC, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	}
	// A write to a pipe whose reader died (the stderr that runs through
	// the previous generation until this one is ready, if that one was
	// killed) must fail, not kill this process.
	signal.Notify(u.pipeC, syscall.SIGPIPE)
	markTerminal()

	switch {
	case opts.Standalone:
		u.mode = modeStandalone
	case os.Getenv(envSupervisor) != "":
		u.mode = modeSupervised
		err = u.joinSupervisor()
	default:
		u.mode = modeChain
		err = u.joinChain()
	}
	if err != nil {
		u.stopSignals()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	if u.up != nil {
		h := u.up.hello
		u.gen, u.parentPID = h.Generation, h.ParentPID
		u.lc.upgrades = h.Upgrades
		u.lc.lastDrain = h.LastDrain
		u.lc.supervisor = h.Supervisor
	}
	u.log = u.Logger().With().Str("component", "upgrade").Logger()
	if u.up != nil {
		u.up.log = u.log
	}
	if u.mode == modeChain {
		// In a chain each generation becomes systemd's main process when
		// it takes over. A supervised one never is: the supervisor speaks.
		u.notify = newNotifier(u.log)
	}
	ev := u.log.Info().Str("version", opts.Version).Str("mode", u.mode)
	if u.up != nil {
		ev = ev.Str("upgrade_source", u.up.hello.Source)
	}
	ev.Bool("hot_restart", u.mode != modeStandalone && !(u.pid1 && u.mode == modeChain)).Msg("starting")
	if u.pid1 && u.mode == modeChain {
		u.log.Warn().Msg("running as PID 1: hot restart is disabled, since this process's exit " +
			"would kill the new generation; run it under the supervisor, or roll the container to upgrade")
	}

	u.lc.state = StateStarting
	u.publish()
	if u.mode != modeChain || u.up == nil {
		close(u.prevGone)
	} else {
		u.wg.Add(1)
		go u.awaitParentExit() // ends when the parent exits or this generation finishes
	}
	u.wg.Add(1)
	go u.loop() // ends when the generation has finished
	return u, nil
}

// joinChain sets up chain mode: tableflip, and for a new generation the
// link to the previous one.
func (u *Upgrader) joinChain() error {
	tf, err := tableflip.New(tableflip.Options{UpgradeTimeout: u.opts.UpgradeTimeout})
	if err != nil {
		return err
	}
	u.tf = tf
	if !tf.HasParent() {
		// LISTEN_* are for this process only: unset, so that no later
		// generation mistakes them for its own.
		u.activated = map[string]*os.File{}
		for _, f := range activation.Files(true) {
			u.activated[f.Name()] = f
		}
		return nil
	}
	up, err := joinParent(tf)
	if err != nil {
		tf.Stop()
		return fmt.Errorf("join previous generation: %w", err)
	}
	u.up = up
	return nil
}

func (u *Upgrader) awaitParentExit() {
	defer u.wg.Done()
	ctx, cancel := untilClosed(u.finished)
	defer cancel()
	if u.tf.WaitForParent(ctx) == nil || ctx.Err() == nil {
		close(u.prevGone)
		u.do(func() {
			if !u.lc.committed && !u.lc.finishing {
				// Its stderr pipe ran through the parent: put the real
				// one back now, not at ready.
				u.up.restoreStderr()
				u.log.Warn().Int("parent_pid", u.parentPID).
					Msg("the previous generation exited before the handoff: this generation will serve alone")
			}
			u.maybeStartUpgrade()
		})
	}
}

// untilClosed returns a context that ends when done is closed or cancel is
// called, whichever comes first.
func untilClosed(done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // ends when done is closed or the context is canceled
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// PreviousExited returns a channel closed once the generation this one
// replaced has exited, after its drain and cleanup hooks: what it
// persisted is then on disk. For the first generation, and for a
// supervised one, it is closed from the start.
func (u *Upgrader) PreviousExited() <-chan struct{} { return u.prevGone }

// Logger returns Options.Logger with this process's pid, generation and,
// for a new generation, parent_pid: the root logger for the rest of the
// program.
func (u *Upgrader) Logger() zerolog.Logger {
	c := u.opts.Logger.With().Int("pid", u.pid).Int("generation", u.gen)
	if u.parentPID != 0 {
		c = c.Int("parent_pid", u.parentPID)
	}
	return c.Logger()
}

// Generation is 1 for the first process, and one more for each handoff.
func (u *Upgrader) Generation() int { return u.gen }

// HasParent reports whether this process was started by an upgrade (or,
// supervised, by the supervisor for any generation but the first).
func (u *Upgrader) HasParent() bool { return u.up != nil && u.gen > 1 }

// Supervised reports whether a supervisor started this generation.
func (u *Upgrader) Supervised() bool { return u.mode == modeSupervised }

// OnCleanup registers fn to run after this generation's drain, whether it
// handed over or stopped. Hooks run in reverse order of registration, each
// bounded by Options.CleanupTimeout; an error is logged and the next hook
// still runs. It must be called before Ready.
func (u *Upgrader) OnCleanup(name string, fn func(ctx context.Context) error) error {
	u.regMu.Lock()
	defer u.regMu.Unlock()
	if u.regClosed {
		return errRegistrationClosed
	}
	u.cleanups = append(u.cleanups, cleanup{name: name, fn: fn})
	return nil
}

// Draining returns a channel closed when this generation's drain begins.
// Handlers of long-lived streams (SSE, WebSocket, gRPC watches) watch it to
// tell their clients to reconnect, which then reach the next generation.
func (u *Upgrader) Draining() <-chan struct{} { return u.drainingC }

// IsReady reports whether the service, as this process serves it, should
// receive new traffic: what a readiness probe asks. It is true while this
// generation serves, and also across a handoff, on either side of it: a
// generation still starting or in probation beside a serving one, and one
// draining after it handed over, answer for a service that goes on (a
// probe that reached either would otherwise take a healthy endpoint out
// of rotation during every reload). It is false before the first
// generation is ready and from the moment a stop begins.
func (u *Upgrader) IsReady() bool {
	switch u.snap.Load().State {
	case StateServing, StateUpgrading:
		return true
	case StateStarting:
		return u.HasParent()
	case StateDraining:
		return u.handedOff.Load()
	}
	return false
}

// HandedOver reports whether this generation handed over to a successor
// (rather than stopping the service). A cleanup hook asks it to skip work
// only a full stop needs, such as persisting state the successor got over
// the handoff channel.
func (u *Upgrader) HandedOver() bool { return u.handedOff.Load() }

// Done returns a channel closed once the generation has drained and run
// its cleanup hooks.
func (u *Upgrader) Done() <-chan struct{} { return u.finished }

// Run waits until this generation has handed over or stopped, and returns
// after its drain and cleanup, once every goroutine the Upgrader started
// has ended. SIGHUP upgrades; SIGTERM and SIGINT stop; a second SIGTERM or
// SIGINT returns ErrForced at once. Canceling ctx stops the generation
// like SIGTERM does.
func (u *Upgrader) Run(ctx context.Context) error {
	defer u.stopSignals()
	select {
	case <-u.finished:
	case <-u.forcedC:
		return ErrForced
	case <-ctx.Done():
		u.do(func() { u.stop("context canceled", time.Time{}) })
		select {
		case <-u.finished:
		case <-u.forcedC:
			return ErrForced
		}
	}
	u.wg.Wait()
	return u.runErr
}

func (u *Upgrader) stopSignals() {
	if !u.opts.IgnoreSignals {
		signal.Stop(u.sigC)
	}
	signal.Stop(u.pipeC)
}

// Shutdown stops this generation gracefully: it is marked not ready, keeps
// serving for Options.ShutdownDelay, drains within Options.DrainTimeout or
// ctx's deadline if sooner, and runs its cleanup hooks. It returns when
// that is done, or ctx.Err() if ctx ends first (the stop goes on).
func (u *Upgrader) Shutdown(ctx context.Context) error {
	dl, _ := ctx.Deadline()
	u.do(func() { u.stop("shutdown requested", dl) })
	select {
	case <-u.finished:
		return nil
	case <-u.forcedC:
		return ErrForced
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Upgrade starts a new generation from the binary at this process's path
// and waits until it has taken over or failed. On success this generation
// drains and Run returns once it is done. It fails with
// ErrUpgradeInProgress while another upgrade runs, with *UpgradeError when
// the new generation failed, and with ctx.Err() if ctx ends first (the
// upgrade goes on). In chain mode, if the previous generation is still
// draining, it first waits for it to exit, which tableflip requires; a
// supervisor has no such wait.
func (u *Upgrader) Upgrade(ctx context.Context) (Result, error) {
	ch := make(chan upgradeOutcome, 1)
	var err error
	if !u.do(func() { err = u.request("api", ch) }) {
		return Result{}, ErrStopping
	}
	if err != nil {
		return Result{}, err
	}
	select {
	case o := <-ch:
		return o.res, o.err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// Status returns a snapshot of this generation. It takes no lock that a
// slow path holds: the lifecycle goroutine publishes its part, and the
// servers count their own traffic.
func (u *Upgrader) Status() Status {
	st := *u.snap.Load()
	st.Uptime = Duration(time.Since(u.started))
	st.Servers = nil
	for _, sv := range u.registered() {
		s := sv.status()
		st.Servers = append(st.Servers, s)
		if !s.Control {
			st.Requests += s.Requests
			st.InFlight += s.InFlight
			st.Connections += s.Connections
		}
	}
	return st
}
