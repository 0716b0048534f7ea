package upgrade

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
)

// Defaults for the zero values of Options.
const (
	DefaultUpgradeTimeout = 60 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
	DefaultIdleGrace      = time.Second
	DefaultCloseSpread    = time.Second
	DefaultCleanupTimeout = 10 * time.Second
	// DefaultHandOverTimeout bounds Options.HandOver.
	DefaultHandOverTimeout = 10 * time.Second

	// DefaultGoAwayAckTimeout is Options.GoAwayAckTimeout's default.
	DefaultGoAwayAckTimeout = time.Second
)

// Errors an upgrade or a stop can end with. Match them with errors.Is.
var (
	// ErrUpgradeInProgress: Upgrade was called while another upgrade runs.
	ErrUpgradeInProgress = errors.New("an upgrade is already in progress")
	// ErrHotRestartDisabled: the process is PID 1 of its PID namespace
	// (a container) and not supervised, so its exit would kill the new
	// generation.
	ErrHotRestartDisabled = errors.New("hot restart is disabled: this process is PID 1 of its PID namespace, " +
		"so its exit would kill the new generation; run it under the supervisor (Supervise; server -supervise), " +
		"or roll the container (or pod) instead")
	// ErrStandalone: Options.Standalone was set; there is no handoff.
	ErrStandalone = errors.New("hot restart is unavailable in standalone mode")
	// ErrStopping: the generation is stopping or has handed over.
	ErrStopping = errors.New("this generation is stopping")
	// ErrForced: a second stop signal arrived; Run returned without
	// waiting for the drain, and the caller should exit with status 1.
	ErrForced = errors.New("second stop signal: exiting at once")
	// ErrAborted: the process that started this generation told it to
	// leave before it took over (it is stopping itself). Ready returns it
	// after the drain; exit with a non-zero status.
	ErrAborted = errors.New("the upgrade was called off by the generation being replaced")
)

// Options configure an Upgrader. The zero value of every field is usable.
type Options struct {
	// Logger receives one event per lifecycle transition. Zero means no logs.
	Logger zerolog.Logger
	// Version names this build in logs, status and the ready report.
	Version string
	// PIDFile, when set, always holds the pid of the serving generation;
	// it is replaced atomically. A new generation writes it before it
	// reports ready, so a PID file that cannot be written fails the
	// upgrade, not the service. Zero means no PID file.
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
	// GoAwayAckTimeout bounds how long a drain waits for an HTTP/2 client
	// to acknowledge the PING it sent with the first GOAWAY of the two-step
	// close (RFC 9113 §6.8) before it sends the final GOAWAY; the drain
	// timeout bounds it too. Streams the client opened before it read the
	// first GOAWAY are served if they arrive within it. Zero means
	// DefaultGoAwayAckTimeout.
	GoAwayAckTimeout time.Duration
	// CleanupTimeout bounds each cleanup hook. Zero means DefaultCleanupTimeout.
	CleanupTimeout time.Duration
	// Probation, when set, makes a new generation serve live traffic beside
	// the old one for this long before it reports ready, so that a binary
	// that crashes soon after start fails the upgrade instead of the
	// service. It must be shorter than UpgradeTimeout. Zero means none.
	Probation time.Duration
	// HandOver, when set, is called in the serving generation when its
	// successor asks for its state (InheritedState), while both serve: what
	// it returns reaches the successor over the handoff channel, with no
	// disk in between. An error is passed on to the successor, which
	// decides whether it can start without. It is bounded by
	// DefaultHandOverTimeout. Zero means no state is handed over.
	HandOver func(ctx context.Context) ([]byte, error)
	// LogConnections logs each accepted connection (a Debug event with its
	// addresses), for tracing which generation took which connection. Zero
	// means no per-connection events, whatever the logger's level.
	LogConnections bool
	// Standalone disables the handoff: listeners are bound directly and
	// upgrades fail with ErrStandalone. Use it to embed a server in a
	// process that is not its own, such as a test.
	Standalone bool
	// IgnoreSignals leaves SIGHUP, SIGTERM and SIGINT to the caller, who
	// drives the Upgrader through Upgrade and Shutdown alone. Zero means
	// the Upgrader handles them.
	IgnoreSignals bool
}

// withDefaults checks o and fills its zero values.
func (o Options) withDefaults() (Options, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"UpgradeTimeout", o.UpgradeTimeout}, {"DrainTimeout", o.DrainTimeout},
		{"ShutdownDelay", o.ShutdownDelay}, {"IdleGrace", o.IdleGrace},
		{"CloseSpread", o.CloseSpread}, {"CleanupTimeout", o.CleanupTimeout},
		{"GoAwayAckTimeout", o.GoAwayAckTimeout},
		{"Probation", o.Probation},
	} {
		if d.v < 0 {
			return o, fmt.Errorf("upgrade: %s is negative (%v)", d.name, d.v)
		}
	}
	if o.UpgradeTimeout == 0 {
		o.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.IdleGrace == 0 {
		o.IdleGrace = DefaultIdleGrace
	}
	if o.CloseSpread == 0 {
		o.CloseSpread = DefaultCloseSpread
	}
	if o.GoAwayAckTimeout == 0 {
		o.GoAwayAckTimeout = DefaultGoAwayAckTimeout
	}
	if o.CleanupTimeout == 0 {
		o.CleanupTimeout = DefaultCleanupTimeout
	}
	if o.Probation > 0 && o.Probation >= o.UpgradeTimeout {
		return o, fmt.Errorf("upgrade: Probation (%v) must be shorter than UpgradeTimeout (%v)",
			o.Probation, o.UpgradeTimeout)
	}
	return o, nil
}
