package restarttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults of the Config fields whose zero value means "the default".
const (
	DefaultInterval       = time.Second
	DefaultClients        = 32
	DefaultPostShare      = 0.3
	DefaultH2Streams      = 4
	DefaultRequestTimeout = 10 * time.Second
	DefaultReadyTimeout   = 30 * time.Second
	DefaultRestartTimeout = time.Minute
	DefaultStopTimeout    = 10 * time.Second
)

// Mode is a kind of client.
type Mode string

// The client kinds. None retries a request. Every client owns its
// connections: no pool is shared with anything else.
const (
	// KeepAlive is HTTP/1.1 on one connection per client, kept for as long
	// as the server keeps it. The client writes its next request on the
	// connection it holds without first checking whether the server closed
	// it meanwhile, as wrk does. Over TLS when the URL is https.
	KeepAlive Mode = "h1"
	// NewConn is HTTP/1.1 with a new connection for every request
	// (Connection: close).
	NewConn Mode = "h1-newconn"
	// H2C is HTTP/2 with prior knowledge over cleartext TCP (URL http).
	H2C Mode = "h2c"
	// H2 is HTTP/2 over TLS, negotiated with ALPN (URL https).
	H2 Mode = "h2"
	// GRPC is grpc.health.v1.Health/Check with grpc-go, TLS when the URL
	// is https. grpc-go retries transparently an RPC that the server
	// refused unprocessed (GOAWAY, REFUSED_STREAM), and no option turns
	// that off; the kit counts each such retry in
	// Report.GRPCTransparentRetries. Configured retries are disabled.
	GRPC Mode = "grpc"
)

// Modes lists every mode, in the order clients are assigned to them.
var Modes = []Mode{KeepAlive, NewConn, H2C, H2, GRPC}

// RestartInfo tells a restart which processes the kit sees.
type RestartInfo struct {
	// Index counts restarts from 1.
	Index int
	// ServerPID is the pid of the first process the kit started, and
	// ServerPGID its process group; zero when the kit started no server.
	ServerPID, ServerPGID int
	// PIDs are the living processes that hold the listening socket, oldest
	// first (every living tracked process if none does).
	PIDs []int
	// NewestPID is the last of PIDs: the serving generation of a server
	// that re-executes itself, once its previous handoff has ended.
	NewestPID int
}

// Config says what to start, what to load and how to restart it.
type Config struct {
	// Command is the server's argv; Shell is a command line run with
	// /bin/sh -c. Set at most one. The kit starts it in a process group
	// of its own, tracks every process in that group and every
	// descendant, and stops them all by pid when it ends. With neither,
	// the kit starts and stops nothing: the caller runs the server.
	Command []string
	Shell   string
	// Dir is the working directory of the server and of the restart
	// command. Empty means the caller's.
	Dir string
	// Env is added to the caller's environment for the server and the
	// restart command.
	Env []string
	// Output gets the stdout and stderr of the server and of the restart
	// command. Nil discards them.
	Output io.Writer

	// URL is what the clients request; its host must be a loopback
	// address (127.0.0.0/8, ::1 or localhost): the kit sends traffic
	// nowhere else. https uses TLS.
	URL string
	// CAFile is a PEM file of the certificates that sign the server's;
	// empty means the system's. Insecure skips verifying it.
	CAFile   string
	Insecure bool

	// RestartShell is run with /bin/sh -c for each restart, with
	// SERVER_PID, SERVER_PGID, SERVER_PIDS, SERVER_NEWEST_PID and
	// RESTART_INDEX set as in RestartInfo, in a process group the kit
	// tracks (so a server it starts is tracked). A non-zero exit is a
	// failed restart.
	RestartShell string
	// Restart, when RestartShell is empty, is called for each restart on
	// the goroutine that called Check or Run, so a test may call t.Fatal
	// in it. An error is a failed restart.
	Restart func(ctx context.Context, r RestartInfo) error
	// WaitGeneration makes each restart last until the handoff is over: a
	// generation not seen before has answered (when GenHeader counts
	// them), and the process that was RestartInfo.NewestPID has exited
	// (when the kit started the server); within RestartTimeout, else the
	// restart failed. It keeps a restart that only sends a signal from
	// overlapping the previous handoff, and its signal from reaching a new
	// process before that can handle it.
	WaitGeneration bool
	// Restarts is how many restarts to do.
	Restarts int
	// Interval is the pause between the end of one restart and the start
	// of the next, and between the start of the load and the first. Zero
	// means DefaultInterval.
	Interval time.Duration
	// Duration is the least time the load runs. Zero means long enough
	// for the restarts: the load runs until the last restart has returned,
	// an Interval has passed, and every client has had an answer to a
	// request sent after that restart (or RequestTimeout has passed).
	Duration time.Duration

	// Clients is how many clients send requests at once, each in a loop
	// with no pause. Zero means DefaultClients.
	Clients int
	// Modes are the client kinds; clients are assigned to them in turn,
	// so a mode listed twice gets twice the clients. Empty means KeepAlive
	// alone.
	Modes []Mode
	// H2Streams is how many HTTP/2 clients share one connection. Zero
	// means DefaultH2Streams.
	H2Streams int
	// PostPath, when set, gets a share of the HTTP requests as POSTs of a
	// random body of 1 to 8192 bytes, which the answer must echo exactly.
	PostPath string
	// PostShare is that share, from 0 to 1. Zero means DefaultPostShare.
	PostShare float64
	// SlowPath, when set, is requested with GET in a loop by SlowClients
	// of the clients, so that requests are in flight at each restart.
	SlowPath string
	// SlowClients is how many clients request SlowPath. Zero means one
	// in eight, at least one.
	SlowClients int
	// GenHeader names the response header (gRPC: the header metadata)
	// that tells which generation answered. Empty counts generations by
	// the processes that held the listening socket instead, which needs a
	// server the kit started.
	GenHeader string
	// GRPCService is the service name of the gRPC health checks; empty
	// asks for the server as a whole.
	GRPCService string

	// RequestTimeout bounds each request, connecting included. Zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// ReadyTimeout bounds the wait for the first answer. Zero means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// RestartTimeout bounds each RestartShell (the command is killed after
	// it) and the wait of WaitGeneration. Zero means DefaultRestartTimeout.
	RestartTimeout time.Duration
	// StopTimeout is how long the server's processes have to exit after
	// SIGTERM at the end before SIGKILL. Zero means DefaultStopTimeout.
	StopTimeout time.Duration

	// Logf, when set, gets a line at each step (server started, ready,
	// each restart).
	Logf func(format string, args ...any)
}

// Validate checks a Config as Check does, without running anything. Its
// error is a *ConfigError.
func Validate(c Config) error {
	_, err := validate(c)
	return err
}

// settings is a validated Config with defaults filled in.
type settings struct {
	Config
	target           *url.URL
	hostport         string
	port             int
	slowURL, postURL string
	manage           bool
}

// ConfigError is a Config field with a bad value.
type ConfigError struct {
	Field string // the name of the Config field to fix
	Msg   string // what is wrong, and what would be right
}

func (e *ConfigError) Error() string { return "restarttest: Config." + e.Field + ": " + e.Msg }

func configErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// validate checks c and fills in its defaults. Messages name the field.
func validate(c Config) (*settings, error) {
	s := &settings{Config: c}
	if len(c.Command) > 0 && c.Shell != "" {
		return nil, configErr("Shell", "Command is set too: set one")
	}
	s.manage = len(c.Command) > 0 || c.Shell != ""
	if len(c.Command) > 0 && c.Command[0] == "" {
		return nil, configErr("Command", "Command[0] is empty: it names the program")
	}
	if c.URL == "" {
		return nil, configErr("URL", "empty: it is what the clients request, such as http://127.0.0.1:8080/")
	}
	u, hostport, port, err := parseTarget(c.URL)
	if err != nil {
		return nil, configErr("URL", "%q: %v", c.URL, err)
	}
	s.target, s.hostport, s.port = u, hostport, port
	if c.Restarts < 0 {
		return nil, configErr("Restarts", "%d: want 0 or more", c.Restarts)
	}
	if c.Restarts > 0 && c.RestartShell == "" && c.Restart == nil {
		return nil, configErr("RestartShell", "empty, and so is Restart, with Restarts = %d: say how to restart", c.Restarts)
	}
	if c.RestartShell != "" && c.Restart != nil {
		return nil, configErr("Restart", "RestartShell is set too: set one")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Interval", &s.Interval, DefaultInterval},
		{"RequestTimeout", &s.RequestTimeout, DefaultRequestTimeout},
		{"ReadyTimeout", &s.ReadyTimeout, DefaultReadyTimeout},
		{"RestartTimeout", &s.RestartTimeout, DefaultRestartTimeout},
		{"StopTimeout", &s.StopTimeout, DefaultStopTimeout},
	} {
		if *d.v < 0 {
			return nil, configErr(d.name, "%v: want a positive duration, or zero for %v", *d.v, d.def)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.Duration < 0 {
		return nil, configErr("Duration", "%v: want a positive duration, or zero", c.Duration)
	}
	if c.Clients < 0 {
		return nil, configErr("Clients", "%d: want 1 or more, or zero for %d", c.Clients, DefaultClients)
	}
	if s.Clients == 0 {
		s.Clients = DefaultClients
	}
	if c.H2Streams < 0 {
		return nil, configErr("H2Streams", "%d: want 1 or more, or zero for %d", c.H2Streams, DefaultH2Streams)
	}
	if s.H2Streams == 0 {
		s.H2Streams = DefaultH2Streams
	}
	if c.PostShare < 0 || c.PostShare > 1 {
		return nil, configErr("PostShare", "%v: want a share from 0 to 1", c.PostShare)
	}
	if s.PostShare == 0 {
		s.PostShare = DefaultPostShare
	}
	if len(s.Modes) == 0 {
		s.Modes = []Mode{KeepAlive}
	}
	for _, m := range s.Modes {
		switch m {
		case KeepAlive, NewConn, GRPC:
		case H2C:
			if u.Scheme != "http" {
				return nil, configErr("Modes", "h2c needs an http URL, not %s (use h2 for HTTP/2 over TLS)", u.Scheme)
			}
		case H2:
			if u.Scheme != "https" {
				return nil, configErr("Modes", "h2 is HTTP/2 over TLS and needs an https URL (use h2c for cleartext)")
			}
		default:
			return nil, configErr("Modes", "unknown mode %q: want one of h1, h1-newconn, h2c, h2, grpc", m)
		}
	}
	if c.PostPath != "" {
		if s.postURL, err = sameOrigin(u, c.PostPath); err != nil {
			return nil, configErr("PostPath", "%q: %v", c.PostPath, err)
		}
	}
	if c.SlowPath != "" {
		if s.slowURL, err = sameOrigin(u, c.SlowPath); err != nil {
			return nil, configErr("SlowPath", "%q: %v", c.SlowPath, err)
		}
		if s.SlowClients == 0 {
			s.SlowClients = max(1, s.Clients/8)
		}
	}
	if c.SlowClients < 0 || (c.SlowPath != "" && s.SlowClients >= s.Clients) {
		return nil, configErr("SlowClients", "%d: want from 0 to Clients-1 (%d)", s.SlowClients, s.Clients-1)
	}
	if c.GenHeader != "" && !validHeaderName(c.GenHeader) {
		return nil, configErr("GenHeader", "%q is not a valid header name", c.GenHeader)
	}
	if !s.manage && c.GenHeader == "" {
		return nil, configErr("GenHeader", "empty, and the kit starts no server (Command and Shell are empty): it cannot count generations")
	}
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			return nil, configErr("CAFile", "%v", err)
		}
	}
	return s, nil
}

// sameOrigin resolves a path against the target: it must be a path, not a
// URL elsewhere.
func sameOrigin(u *url.URL, path string) (string, error) {
	if !strings.HasPrefix(path, "/") {
		return "", errors.New("want a path that starts with /")
	}
	r, err := u.Parse(path)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}

func validHeaderName(s string) bool {
	for _, c := range s {
		if c > 127 || !strings.ContainsRune("!#$%&'*+-.^_`|~", c) && !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return http.CanonicalHeaderKey(s) != ""
}
