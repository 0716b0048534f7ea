package upgrade

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// Defaults for the zero values of Options.
const (
	DefaultUpgradeTimeout = 60 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultIdleGrace      = time.Second
	DefaultCloseSpread    = time.Second
	DefaultCleanupTimeout = 10 * time.Second
)

// Errors an upgrade or a stop can end with. Match them with errors.Is.
var (
	// ErrUpgradeInProgress: Upgrade was called while another upgrade runs.
	ErrUpgradeInProgress = errors.New("an upgrade is already in progress")
	// ErrHotRestartDisabled: the process is PID 1 of its PID namespace
	// (a container), where its exit would kill the new generation.
	ErrHotRestartDisabled = errors.New("hot restart is disabled: this process is PID 1 of its PID namespace, " +
		"so its exit would kill the new generation; roll the container (or pod) instead")
	// ErrStandalone: Options.Standalone was set; there is no handoff.
	ErrStandalone = errors.New("hot restart is unavailable in standalone mode")
	// ErrStopping: the generation is stopping or has handed over.
	ErrStopping = errors.New("this generation is stopping")
	// ErrForced: a second stop signal arrived; Run returned without
	// waiting for the drain, and the caller should exit with status 1.
	ErrForced = errors.New("second stop signal: exiting at once")
)

// Options configure an Upgrader. The zero value of every field is usable.
type Options struct {
	// Logger receives one event per lifecycle transition. Zero means no logs.
	Logger zerolog.Logger
	// Version names this build in logs, status and the ready report.
	Version string
	// PIDFile, when set, always holds the pid of the serving generation;
	// it is replaced atomically. Zero means no PID file.
	PIDFile string
	// UpgradeTimeout bounds how long a new generation may take to become
	// ready before it is killed. Zero means DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// DrainTimeout bounds the drain; what is open at its end is force-closed.
	// Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// ShutdownDelay is how long a stop keeps serving, with the generation
	// reported not ready, before the drain begins (load balancers and
	// Kubernetes endpoints take a moment to notice). Zero means none.
	ShutdownDelay time.Duration
	// IdleGrace is how long a drain leaves a keep-alive connection alone
	// after it went idle, since a request may be on its way. Zero means
	// DefaultIdleGrace.
	IdleGrace time.Duration
	// CloseSpread is the window over which a drain spreads the closing of
	// idle connections. Zero means DefaultCloseSpread.
	CloseSpread time.Duration
	// CleanupTimeout bounds each cleanup hook. Zero means DefaultCleanupTimeout.
	CleanupTimeout time.Duration
	// Probation, when set, makes a new generation serve live traffic beside
	// the old one for this long before it reports ready, so that a binary
	// that crashes soon after start fails the upgrade instead of the
	// service. It must be shorter than UpgradeTimeout. Zero means none.
	Probation time.Duration
	// Standalone disables the handoff: listeners are bound directly and
	// upgrades fail with ErrStandalone. Use it to embed a server in a
	// process that is not its own, such as a test.
	Standalone bool
	// IgnoreSignals leaves SIGHUP, SIGTERM and SIGINT to the caller, who
	// drives the Upgrader through Upgrade and Shutdown alone. Zero means
	// Run handles them.
	IgnoreSignals bool
}

// Upgrader runs one generation of a service. Create it with New.
type Upgrader struct {
	opts      Options
	log       zerolog.Logger // with pid and generation
	tf        *tableflip.Upgrader
	pid       int
	parentPID int
	gen       int
	started   time.Time
	stderr    *os.File   // stderr as this process got it, before any swap
	parent    *childSide // nil for the first generation
	pid1      bool
	notify    *notifier
	// activated are the sockets systemd passed by socket activation, by
	// FileDescriptorName; only a first generation has any.
	activated map[string]*os.File

	sigC      chan os.Signal
	readyC    chan struct{}
	readyOnce sync.Once
	readyErr  error
	wake      chan struct{} // an upgrade request is pending
	stopC     chan struct{} // closed when the generation stops or hands over
	finishing sync.Once
	finished  chan struct{} // closed when drain and cleanup are done
	drainingC chan struct{} // closed when the drain begins
	prevGone  chan struct{} // closed when the previous generation has exited
	wg        sync.WaitGroup

	draining      atomic.Bool
	requests      atomic.Int64
	inFlight      atomic.Int64
	drainRequests atomic.Int64

	mu          sync.Mutex
	state       State
	servers     []*served
	listenKeys  []string // "network address" of every listener, for the hello
	cleanups    []cleanup
	pending     bool   // an upgrade waits to run
	pendingSrc  string // who asked first
	running     bool   // an upgrade runs
	again       bool   // asked for while one ran: run another after it
	waiters     []chan upgradeOutcome
	upgrades    UpgradeCounts
	lastUpgrade *UpgradeRecord
	lastDrain   *DrainRecord
	successor   *spawnResult // set once a handoff succeeded
	failErr     error
}

// New creates the Upgrader of this process. Only one may exist per process
// unless Options.Standalone is set. A new generation learns its generation
// number from its parent here, so create the logger for the rest of the
// program from Logger afterwards.
func New(opts Options) (*Upgrader, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"UpgradeTimeout", opts.UpgradeTimeout}, {"DrainTimeout", opts.DrainTimeout},
		{"ShutdownDelay", opts.ShutdownDelay}, {"IdleGrace", opts.IdleGrace},
		{"CloseSpread", opts.CloseSpread}, {"CleanupTimeout", opts.CleanupTimeout},
		{"Probation", opts.Probation},
	} {
		if d.v < 0 {
			return nil, fmt.Errorf("upgrade: %s is negative (%v)", d.name, d.v)
		}
	}
	if opts.UpgradeTimeout == 0 {
		opts.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	if opts.IdleGrace == 0 {
		opts.IdleGrace = DefaultIdleGrace
	}
	if opts.CloseSpread == 0 {
		opts.CloseSpread = DefaultCloseSpread
	}
	if opts.CleanupTimeout == 0 {
		opts.CleanupTimeout = DefaultCleanupTimeout
	}
	if opts.Probation > 0 && opts.Probation >= opts.UpgradeTimeout {
		return nil, fmt.Errorf("upgrade: Probation (%v) must be shorter than UpgradeTimeout (%v)",
			opts.Probation, opts.UpgradeTimeout)
	}

	u := &Upgrader{
		opts:      opts,
		pid:       os.Getpid(),
		gen:       1,
		started:   time.Now(),
		stderr:    os.Stderr,
		sigC:      make(chan os.Signal, 64),
		readyC:    make(chan struct{}),
		wake:      make(chan struct{}, 1),
		stopC:     make(chan struct{}),
		finished:  make(chan struct{}),
		drainingC: make(chan struct{}),
		prevGone:  make(chan struct{}),
		state:     StateStarting,
	}
	u.pid1 = u.pid == 1
	// Listen for signals before anything else: SIGHUP's default action
	// would kill a process still starting.
	if !opts.IgnoreSignals {
		signal.Notify(u.sigC, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	}
	if !opts.Standalone {
		tf, err := tableflip.New(tableflip.Options{UpgradeTimeout: opts.UpgradeTimeout})
		if err != nil {
			u.stopSignals()
			return nil, fmt.Errorf("upgrade: %w", err)
		}
		u.tf = tf
		if tf.HasParent() {
			cs, err := u.joinParent()
			if err != nil {
				u.stopSignals()
				tf.Stop()
				return nil, fmt.Errorf("upgrade: join previous generation: %w", err)
			}
			u.parent = cs
			u.gen = cs.hello.Generation
			u.parentPID = cs.hello.ParentPID
			u.upgrades = cs.hello.Upgrades
		} else {
			// LISTEN_* are for this process only: unset, so that no
			// later generation mistakes them for its own.
			u.activated = map[string]*os.File{}
			for _, f := range activation.Files(true) {
				u.activated[f.Name()] = f
			}
		}
	}
	u.log = u.Logger().With().Str("component", "upgrade").Logger()
	if u.tf != nil {
		u.notify = newNotifier(u.log)
	}
	ev := u.log.Info().Str("version", opts.Version)
	if u.parent != nil {
		ev = ev.Str("upgrade_source", u.parent.hello.Source)
	}
	ev.Bool("hot_restart", u.tf != nil && !u.pid1).Msg("starting")
	if u.pid1 && u.tf != nil {
		u.log.Warn().Msg("running as PID 1: hot restart is disabled, since this process's exit " +
			"would kill the new generation; roll the container to upgrade")
	}

	if u.parent == nil {
		close(u.prevGone)
	} else {
		u.wg.Add(1)
		go u.awaitParentExit() // ends when the parent exits or this generation finishes
	}
	u.wg.Add(1)
	go u.worker() // exits when the generation stops or hands over
	return u, nil
}

func (u *Upgrader) awaitParentExit() {
	defer u.wg.Done()
	ctx, cancel := untilClosed(u.finished)
	defer cancel()
	if u.tf.WaitForParent(ctx) == nil || ctx.Err() == nil {
		close(u.prevGone)
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
// persisted is then on disk. For the first generation it is closed from
// the start.
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

// HasParent reports whether this process was started by an upgrade.
func (u *Upgrader) HasParent() bool { return u.parent != nil }

// Listen returns a listener for addr: the previous generation's socket
// when it had one for the same address, or a new one. For unix sockets
// the file is created with mode 0600, and a stale one left by a crashed
// process is replaced. Call it before Ready.
func (u *Upgrader) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	key, err := CanonicalAddr(network, addr)
	if err != nil {
		return nil, err
	}
	if u.tf == nil {
		ln, err := bind(ctx, network, key)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
		}
		u.log.Info().Str("network", network).Str("addr", ln.Addr().String()).Bool("inherited", false).Msg("listening")
		return ln, nil
	}
	inherited := false
	ln, err := u.tf.ListenWithCallback(network, key, func(network, addr string) (net.Listener, error) {
		return bind(ctx, network, addr)
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	if u.parent != nil {
		inherited = u.inheritedKey(network, key)
	}
	u.listened(network, key, ln, inherited, "")
	return ln, nil
}

// activatedKey is the key under which a socket-activated listener is
// passed to later generations: its name, since systemd, not the address
// in the configuration, decides where it listens.
func activatedKey(name string) string { return "systemd:" + name }

// ListenNamed is Listen for a socket that systemd may pass by socket
// activation, under FileDescriptorName name. The first generation takes
// it from systemd, and later ones inherit it under that name, whatever
// addr says; without activation it is Listen(ctx, network, addr).
func (u *Upgrader) ListenNamed(ctx context.Context, name, network, addr string) (net.Listener, error) {
	if u.tf == nil {
		return u.Listen(ctx, network, addr)
	}
	key := activatedKey(name)
	for _, nw := range []string{"tcp", "unix"} {
		ln, err := u.tf.Listener(nw, key)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", name, err)
		}
		if ln != nil {
			u.listened(nw, key, ln, true, name)
			return ln, nil
		}
	}
	f := u.activated[name]
	if f == nil {
		return u.Listen(ctx, network, addr)
	}
	delete(u.activated, name)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("socket-activated %s: %w", name, err)
	}
	tl, ok := ln.(tableflip.Listener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("socket-activated %s: %T cannot be passed on", name, ln)
	}
	nw := ln.Addr().Network()
	if err := u.tf.AddListener(nw, key, tl); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket-activated %s: %w", name, err)
	}
	if want, err := CanonicalAddr(network, addr); err != nil || want != ln.Addr().String() {
		u.log.Info().Str("name", name).Str("configured_addr", addr).Str("addr", ln.Addr().String()).
			Msg("socket activation: serving on the socket systemd passed, not the configured address")
	}
	u.listened(nw, key, ln, false, name)
	return ln, nil
}

// listened records a listener for the next generation's hello and logs it.
func (u *Upgrader) listened(network, key string, ln net.Listener, inherited bool, name string) {
	u.mu.Lock()
	u.listenKeys = append(u.listenKeys, network+" "+key)
	u.mu.Unlock()
	ev := u.log.Info().Str("network", network).Str("addr", ln.Addr().String()).Bool("inherited", inherited)
	if name != "" {
		ev = ev.Str("activation_name", name)
	}
	ev.Msg("listening")
}

// inheritedKey reports whether the previous generation passed a listener
// for key; tableflip does not say whether Listen inherited or bound.
func (u *Upgrader) inheritedKey(network, key string) bool {
	for _, k := range u.parent.hello.Listeners {
		if k == network+" "+key {
			return true
		}
	}
	return false
}

// OnCleanup registers fn to run after this generation's drain, whether it
// handed over or stopped. Hooks run in reverse order of registration, each
// bounded by Options.CleanupTimeout; an error is logged and the next hook
// still runs.
func (u *Upgrader) OnCleanup(name string, fn func(ctx context.Context) error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cleanups = append(u.cleanups, cleanup{name: name, fn: fn})
}

// Draining returns a channel closed when this generation's drain begins.
// Handlers of long-lived streams (SSE, WebSocket) watch it to tell their
// clients to reconnect, which then reach the next generation.
func (u *Upgrader) Draining() <-chan struct{} { return u.drainingC }

// IsReady reports whether this generation should receive new traffic: it
// is ready and not stopping or draining.
func (u *Upgrader) IsReady() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state == StateServing || u.state == StateUpgrading
}

// Ready reports that start-up succeeded. With Options.Probation a new
// generation first serves beside the old one for that long. Then the
// previous generation, if any, is told to stop accepting and drain, and
// the PID file names this process. It returns ErrStopping if the
// generation stopped first.
func (u *Upgrader) Ready() error {
	u.readyOnce.Do(func() { u.readyErr = u.ready() })
	return u.readyErr
}

func (u *Upgrader) ready() error {
	for name, f := range u.activated {
		u.log.Warn().Str("name", name).Msg("socket activation: systemd passed a socket nobody asked for; closing it")
		f.Close()
		delete(u.activated, name)
	}
	if u.parent != nil && u.opts.Probation > 0 {
		u.log.Info().Float64("window_ms", ms(u.opts.Probation)).Msg("probation started")
		t := time.NewTimer(u.opts.Probation)
		select {
		case <-t.C:
		case <-u.stopC:
			t.Stop()
			return ErrStopping
		}
		u.log.Info().Msg("probation passed")
	}
	if u.parent != nil {
		if err := u.parent.restoreStderr(); err != nil {
			return err
		}
		rep := report{PID: u.pid, Version: u.opts.Version, Generation: u.gen}
		if err := u.parent.link.send(message{Ready: &rep}, 5*time.Second); err != nil {
			return fmt.Errorf("report ready to previous generation: %w", err)
		}
	}
	if u.tf != nil {
		if err := u.tf.Ready(); err != nil {
			return fmt.Errorf("report ready: %w", err)
		}
	}
	if u.opts.PIDFile != "" {
		if err := writePIDFile(u.opts.PIDFile, u.pid); err != nil {
			return err
		}
	}
	u.mu.Lock()
	if u.state == StateStarting {
		u.state = StateServing
	}
	if u.parent != nil {
		h := u.parent.hello
		u.lastUpgrade = &UpgradeRecord{
			OK: true, Source: h.Source, StartedAt: h.RequestedAt,
			Duration: Duration(time.Since(h.RequestedAt)),
			NewPID:   u.pid, NewVersion: u.opts.Version, NewGeneration: u.gen,
		}
		u.upgrades.Succeeded++
	}
	u.mu.Unlock()
	close(u.readyC)
	if u.parent != nil {
		u.wg.Add(1)
		go u.awaitParentDrain() // ends when the parent exits or this generation stops
	} else {
		u.notify.ready()
	}
	u.log.Info().Float64("startup_ms", ms(time.Since(u.started))).Msg("ready")
	return nil
}

// awaitParentDrain records the drain report the previous generation sends
// once it has drained, so that status shows how the handoff ended.
func (u *Upgrader) awaitParentDrain() {
	defer u.wg.Done()
	go func() { // unblocks recv when this generation stops first
		select {
		case <-u.stopC:
			u.parent.link.conn.Close()
		case <-u.finished:
		}
	}()
	for {
		m, err := u.parent.link.recv(0)
		if err != nil {
			return
		}
		if m.Drain != nil {
			u.mu.Lock()
			if u.lastDrain == nil {
				u.lastDrain = m.Drain
			}
			u.mu.Unlock()
			u.log.Info().Int("previous_pid", m.Drain.PID).
				Int64("force_closed", m.Drain.Closed.Forced).
				Float64("drain_ms", ms(time.Duration(m.Drain.Duration))).
				Msg("previous generation drained")
		}
	}
}

// Run handles signals until this generation has handed over or stopped,
// and returns after its drain and cleanup. SIGHUP upgrades; SIGTERM and
// SIGINT stop; a second SIGTERM or SIGINT returns ErrForced at once.
// Canceling ctx stops the generation like SIGTERM does. Ready must have
// been called, or Run waits for it before upgrading.
func (u *Upgrader) Run(ctx context.Context) error {
	defer u.stopSignals()
	done := ctx.Done()
	stops := 0
	for {
		select {
		case <-u.finished:
			u.mu.Lock()
			err := u.failErr
			u.mu.Unlock()
			return err
		case <-done:
			done = nil
			stops++
			u.beginStop("context canceled", time.Time{})
		case sig := <-u.sigC:
			if sig == syscall.SIGHUP {
				u.onHangup()
				continue
			}
			stops++
			if stops > 1 {
				u.log.Warn().Str("signal", sig.String()).Msg("second stop signal: exiting now without waiting for the drain")
				return ErrForced
			}
			u.beginStop("signal "+sig.String(), time.Time{})
		}
	}
}

func (u *Upgrader) stopSignals() {
	if !u.opts.IgnoreSignals {
		signal.Stop(u.sigC)
	}
}

// onHangup handles SIGHUP: an upgrade, or a forward to the generation that
// took over, so that no request is lost.
func (u *Upgrader) onHangup() {
	u.mu.Lock()
	succ := u.successor
	u.mu.Unlock()
	if succ != nil {
		u.log.Info().Int("new_pid", succ.PID).Msg("upgrade requested after handoff: forwarding to new generation")
		if err := syscall.Kill(succ.PID, syscall.SIGHUP); err != nil {
			u.log.Warn().Err(err).Int("new_pid", succ.PID).Msg("forward upgrade request")
		}
		return
	}
	if err := u.request("signal", nil); err != nil {
		u.log.Warn().Err(err).Msg("upgrade request ignored")
	}
}

// Shutdown stops this generation gracefully: it is marked not ready, keeps
// serving for Options.ShutdownDelay, drains within Options.DrainTimeout or
// ctx's deadline if sooner, and runs its cleanup hooks. It returns when
// that is done, or ctx.Err() if ctx ends first (the stop goes on).
func (u *Upgrader) Shutdown(ctx context.Context) error {
	dl, _ := ctx.Deadline()
	u.beginStop("shutdown requested", dl)
	select {
	case <-u.finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done returns a channel closed once the generation has drained and run
// its cleanup hooks.
func (u *Upgrader) Done() <-chan struct{} { return u.finished }

// fail stops the generation because it cannot go on; Run returns err.
func (u *Upgrader) fail(err error) {
	u.mu.Lock()
	if u.failErr == nil {
		u.failErr = err
	}
	u.mu.Unlock()
	u.beginStop("error: "+err.Error(), time.Time{})
}

func (u *Upgrader) beginStop(reason string, deadline time.Time) {
	started := false
	u.finishing.Do(func() {
		started = true
		close(u.stopC)
		go u.finish(false, reason, deadline) // closes u.finished when done
	})
	if !started {
		u.log.Info().Str("reason", reason).Msg("stop requested: already stopping or draining")
	}
}

func (u *Upgrader) beginHandoff() bool {
	started := false
	u.finishing.Do(func() {
		started = true
		close(u.stopC)
		go u.finish(true, "handoff", time.Time{}) // closes u.finished when done
	})
	return started
}

// finish is the end of a generation: the shutdown delay for a stop, then
// the drain, the cleanup hooks, and the PID file.
func (u *Upgrader) finish(handoff bool, reason string, deadline time.Time) {
	defer close(u.finished)
	if !handoff {
		u.mu.Lock()
		running := u.running
		u.state = StateStopping
		u.mu.Unlock()
		u.log.Info().Str("reason", reason).Float64("shutdown_delay_ms", ms(u.opts.ShutdownDelay)).Msg("stopping")
		u.notify.stopping()
		if running && u.tf != nil {
			// Stop kills the child tableflip is starting; the attempt fails.
			u.tf.Stop()
		}
		if u.opts.ShutdownDelay > 0 {
			time.Sleep(u.opts.ShutdownDelay)
		}
		if u.tf != nil {
			// Closes the copies kept for a successor and removes unix
			// socket files: there will be no successor.
			u.tf.Stop()
		}
	}
	u.mu.Lock()
	u.state = StateDraining
	u.mu.Unlock()

	dl := time.Now().Add(u.opts.DrainTimeout)
	if !deadline.IsZero() && deadline.Before(dl) {
		dl = deadline
	}
	ctx, cancel := context.WithDeadline(context.Background(), dl)
	stopExtend := func() {}
	if !handoff {
		// After a handoff this process is no longer systemd's main
		// process, and the stop timeout is not its concern.
		stopExtend = u.notify.extendDuring(u.opts.DrainTimeout)
	}
	rec := u.drain(ctx, reasonKind(handoff))
	cancel()
	stopExtend()
	u.mu.Lock()
	u.lastDrain = &rec
	succ := u.successor
	u.mu.Unlock()
	if succ != nil {
		if err := succ.link.send(message{Drain: &rec}, time.Second); err != nil {
			u.log.Debug().Err(err).Msg("send drain record to new generation")
		}
	}

	u.runCleanups()
	if !handoff && u.opts.PIDFile != "" {
		removePIDFile(u.opts.PIDFile, u.pid)
	}
	if succ != nil {
		succ.link.conn.Close()
		// Copy the last of the child's start-up output to stderr. It ends
		// when the child lets go of the pipe (it did when it became
		// ready); bounded, since exiting matters more than that output.
		select {
		case <-succ.teeDone:
		case <-time.After(2 * time.Second):
			u.log.Warn().Int("new_pid", succ.PID).Msg("new generation still holds its start-up stderr pipe; not waiting for it")
		}
	}
	u.mu.Lock()
	u.state = StateStopped
	u.mu.Unlock()
	u.log.Info().Str("reason", reason).Float64("uptime_ms", ms(time.Since(u.started))).Msg("exit")
}

func reasonKind(handoff bool) string {
	if handoff {
		return "handoff"
	}
	return "stop"
}

// Status returns a snapshot of this generation.
func (u *Upgrader) Status() Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := Status{
		PID:            u.pid,
		ParentPID:      u.parentPID,
		Generation:     u.gen,
		Version:        u.opts.Version,
		State:          u.state,
		StartedAt:      u.started,
		Uptime:         Duration(time.Since(u.started)),
		InFlight:       u.inFlight.Load(),
		Requests:       u.requests.Load(),
		UpgradePending: u.pending || u.again,
		Upgrades:       u.upgrades,
	}
	for _, s := range u.servers {
		st.Connections += s.t.count()
	}
	if u.lastUpgrade != nil {
		r := *u.lastUpgrade
		st.LastUpgrade = &r
	}
	if u.lastDrain != nil {
		d := *u.lastDrain
		st.LastDrain = &d
	}
	return st
}
