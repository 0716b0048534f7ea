package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-go/handoff/restarttest"
)

const usageText = `Usage: handoff-check -cmd 'SERVER COMMAND' -url http://127.0.0.1:PORT/ -restart 'RESTART COMMAND' -restarts N [flags]

Starts the server command (with /bin/sh -c, in a process group of its own),
waits until the URL answers, sends requests from -clients clients that
retry nothing while it runs the restart command -restarts times, with
-interval between them, and counts every request's outcome. Every process of the server
(the group, and every descendant, re-executed generations included) is
stopped at the end by pid: SIGTERM, then SIGKILL after -stop-timeout.
Traffic goes only to loopback addresses.

The restart command runs with /bin/sh -c in the server's directory, with:
  SERVER_PID         pid of the first process the kit started
  SERVER_PGID        its process group
  SERVER_PIDS        the living processes that hold the listening socket, oldest first
  SERVER_NEWEST_PID  the newest of them: the serving generation of a server that
                     re-executes itself once its previous handoff has ended
  RESTART_INDEX      1, 2, ...
A hot restart is typically 'kill -HUP $SERVER_NEWEST_PID', or the server's own
tool ('./server ctl upgrade'), or a PID file the server keeps
('kill -HUP $(cat server.pid)'). A server the restart command starts is
tracked and stopped too. A restart that only sends a signal returns at
once; with -wait it lasts until the new generation answers and the old one
has exited, so that the next signal never reaches a handoff under way.

Outcomes: ok; refused (connection refused), reset (connection reset, or a
broken pipe), eof (connection closed before the whole answer), timeout
(no answer within -timeout), non-2xx, wrong-body (a POST's echo differs),
refused-stream (HTTP/2 stream refused unprocessed by GOAWAY or REFUSED_STREAM),
stream-reset, tls, protocol, not-serving (gRPC), other.

The last line is requests=N failed=M restarts=R generations=G. Exit status:
0 when no request and no restart failed and at least restarts+1 generations
answered; 1 otherwise, or when the check could not run (the server never
answered); 2 for bad flags.

Flags:
`

// usageError is a bad flag: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

var (
	errHelp   = errors.New("help requested")
	errFailed = errors.New("check failed")
)

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }
func (e *envList) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return errors.New("want KEY=VALUE")
	}
	*e = append(*e, v)
	return nil
}

// options are the flags.
type options struct {
	cfg           restarttest.Config
	jsonFile      string
	plotFile      string
	serverOutput  string
	quiet         bool
	title         string
	h1, newconn   bool
	h2c, h2, grpc bool
	env           envList
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	c := &o.cfg
	fs := flag.NewFlagSet("handoff-check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.Shell, "cmd", "", "server `command`, run with /bin/sh -c (required)")
	fs.StringVar(&c.Dir, "dir", "", "working `directory` of the server and restart commands (default: this one)")
	fs.Var(&o.env, "env", "`KEY=VALUE` added to the environment of the server and restart commands (repeatable)")
	fs.StringVar(&c.URL, "url", "", "`URL` the clients request, on 127.0.0.1, ::1 or localhost (required)")
	fs.StringVar(&c.RestartShell, "restart", "", "restart `command`, run with /bin/sh -c (required when -restarts > 0)")
	fs.IntVar(&c.Restarts, "restarts", 0, "how many `times` to restart")
	fs.BoolVar(&c.WaitGeneration, "wait", false, "a restart lasts until the handoff is over: a new generation answered (with -gen-header) and the process that was $SERVER_NEWEST_PID exited")
	fs.DurationVar(&c.Interval, "interval", time.Second, "pause between the end of one restart and the start of the next")
	fs.DurationVar(&c.Duration, "duration", 0, "least time the load runs (default: until an -interval after the last restart)")
	fs.IntVar(&c.Clients, "clients", restarttest.DefaultClients, "clients sending at once, each in a loop")
	fs.StringVar(&c.PostPath, "post-path", "", "`path` that echoes a POST's body; a share of requests POST there and check the echo")
	fs.Float64Var(&c.PostShare, "post-share", restarttest.DefaultPostShare, "share of requests that POST to -post-path")
	fs.StringVar(&c.SlowPath, "slow-path", "", "`path` of a slow request some clients send in a loop, to have requests in flight at each restart")
	fs.IntVar(&c.SlowClients, "slow-clients", 0, "clients that send -slow-path (default: one in eight)")
	fs.StringVar(&c.GenHeader, "gen-header", "", "response `header` naming the generation that answered (default: count processes holding the listening socket)")
	fs.BoolVar(&o.h1, "h1", true, "HTTP/1.1 keep-alive clients, one connection each")
	fs.BoolVar(&o.newconn, "newconn", false, "HTTP/1.1 clients opening a new connection per request")
	fs.BoolVar(&o.h2c, "h2c", false, "HTTP/2 clients with prior knowledge over cleartext (http URL)")
	fs.BoolVar(&o.h2, "h2", false, "HTTP/2 clients over TLS (https URL)")
	fs.BoolVar(&o.grpc, "grpc", false, "gRPC health-check clients (grpc-go; its transparent retries are counted)")
	fs.IntVar(&c.H2Streams, "h2-streams", restarttest.DefaultH2Streams, "HTTP/2 clients sharing one connection")
	fs.StringVar(&c.GRPCService, "grpc-service", "", "service `name` in the gRPC health checks (default: the server as a whole)")
	fs.StringVar(&c.CAFile, "ca", "", "PEM `file` of the CA that signs the server's certificate (https)")
	fs.BoolVar(&c.Insecure, "insecure", false, "do not verify the server's certificate (https)")
	fs.DurationVar(&c.RequestTimeout, "timeout", restarttest.DefaultRequestTimeout, "bound of each request")
	fs.DurationVar(&c.ReadyTimeout, "ready-timeout", restarttest.DefaultReadyTimeout, "how long to wait for the server's first answer")
	fs.DurationVar(&c.RestartTimeout, "restart-timeout", restarttest.DefaultRestartTimeout, "bound of each restart command")
	fs.DurationVar(&c.StopTimeout, "stop-timeout", restarttest.DefaultStopTimeout, "at the end, time between SIGTERM and SIGKILL")
	fs.StringVar(&o.jsonFile, "json", "", "write the report with every request's timeline to `file`")
	fs.StringVar(&o.plotFile, "plot", "", "draw the timeline as SVG to `file`")
	fs.StringVar(&o.serverOutput, "server-output", "", "`file` for the output of the server and restart commands (default: stderr)")
	fs.StringVar(&o.title, "title", "", "`title` of the plot (default: the server command)")
	fs.BoolVar(&o.quiet, "q", false, "print no progress lines")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return nil, errHelp
		}
		if strings.Contains(err.Error(), "parse error") {
			return nil, usagef("%v: durations look like 500ms, 1s or 2m, counts like 30 (see -h)", err)
		}
		return nil, usagef("%v (see -h)", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q: handoff-check takes only flags; quote the server command in -cmd", fs.Arg(0))
	}
	return o, o.validate()
}

// validate checks the flags, naming the one to fix.
func (o *options) validate() error {
	c := &o.cfg
	switch {
	case c.Shell == "":
		return usagef("-cmd is required: the command that starts the server, such as -cmd './server -addr 127.0.0.1:8080'")
	case c.URL == "":
		return usagef("-url is required: the URL to load, such as -url http://127.0.0.1:8080/")
	case c.Restarts < 0:
		return usagef("-restarts %d: want 0 or more", c.Restarts)
	case c.Restarts > 0 && c.RestartShell == "":
		return usagef("-restart is required with -restarts %d: the command that restarts the server, such as -restart 'kill -HUP $SERVER_NEWEST_PID'", c.Restarts)
	case c.Interval <= 0:
		return usagef("-interval %v: want a positive duration, such as 1s", c.Interval)
	case c.Duration < 0:
		return usagef("-duration %v: want a positive duration, or 0", c.Duration)
	case c.Clients < 1:
		return usagef("-clients %d: want 1 or more", c.Clients)
	case c.PostShare <= 0 || c.PostShare > 1:
		return usagef("-post-share %v: want a share above 0, up to 1", c.PostShare)
	case c.H2Streams < 1:
		return usagef("-h2-streams %d: want 1 or more", c.H2Streams)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-timeout", c.RequestTimeout}, {"-ready-timeout", c.ReadyTimeout}, {"-restart-timeout", c.RestartTimeout}, {"-stop-timeout", c.StopTimeout}} {
		if d.v <= 0 {
			return usagef("%s %v: want a positive duration", d.name, d.v)
		}
	}
	for _, m := range []struct {
		on   bool
		mode restarttest.Mode
	}{{o.h1, restarttest.KeepAlive}, {o.newconn, restarttest.NewConn}, {o.h2c, restarttest.H2C}, {o.h2, restarttest.H2}, {o.grpc, restarttest.GRPC}} {
		if m.on {
			c.Modes = append(c.Modes, m.mode)
		}
	}
	https := strings.HasPrefix(c.URL, "https:")
	switch {
	case o.h2 && !https:
		return usagef("-h2 is HTTP/2 over TLS: it needs an https -url (use -h2c for cleartext)")
	case o.h2c && https:
		return usagef("-h2c is HTTP/2 over cleartext: it needs an http -url (use -h2 for TLS)")
	}
	if len(c.Modes) == 0 {
		return usagef("-h1=false and no other client mode: add one of -newconn, -h2c, -h2, -grpc")
	}
	if len(c.Modes) > c.Clients {
		return usagef("-clients %d: fewer than the %d client modes asked for", c.Clients, len(c.Modes))
	}
	c.Env = o.env
	for _, f := range []struct{ flag, path string }{{"-json", o.jsonFile}, {"-plot", o.plotFile}, {"-server-output", o.serverOutput}} {
		if f.path == "" {
			continue
		}
		if fi, err := os.Stat(filepath.Dir(f.path)); err != nil || !fi.IsDir() {
			return usagef("%s %s: directory %s does not exist", f.flag, f.path, filepath.Dir(f.path))
		}
	}
	if err := restarttest.Validate(*c); err != nil {
		var ce *restarttest.ConfigError
		if errors.As(err, &ce) {
			return usagef("%s: %s", flagOf(ce.Field), ce.Msg)
		}
		return usagef("%v", err)
	}
	return nil
}

// flagOf names the flag of a Config field.
func flagOf(field string) string {
	switch field {
	case "Shell", "Command":
		return "-cmd"
	case "Modes":
		return "-url or the client mode flags (-h1, -newconn, -h2c, -h2, -grpc)"
	case "RestartShell", "Restart":
		return "-restart"
	case "CAFile":
		return "-ca"
	case "RequestTimeout":
		return "-timeout"
	case "GRPCService":
		return "-grpc-service"
	case "URL":
		return "-url"
	}
	var b strings.Builder
	for i, r := range field {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte('-')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return "-" + b.String()
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	c := o.cfg
	c.Output = stderr
	if o.serverOutput != "" {
		f, err := os.OpenFile(o.serverOutput, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return usagef("-server-output: %v", err)
		}
		defer f.Close()
		c.Output = f
	}
	if !o.quiet {
		c.Logf = func(format string, args ...any) { fmt.Fprintf(stderr, "handoff-check: "+format+"\n", args...) }
	}
	rep, err := restarttest.Check(ctx, c)
	if rep == nil { // a bad config, which validate should have caught
		return err
	}
	if o.title != "" {
		rep.Title = o.title
	}
	var werr error
	if o.jsonFile != "" {
		werr = errors.Join(werr, writeFile(o.jsonFile, rep.WriteJSON))
	}
	if o.plotFile != "" {
		werr = errors.Join(werr, writeFile(o.plotFile, rep.WriteSVG))
	}
	if err != nil {
		fmt.Fprintf(stderr, "handoff-check: %v\n", err)
	}
	if werr != nil {
		fmt.Fprintf(stderr, "handoff-check: %v\n", werr)
	}
	fmt.Fprint(stdout, rep.Summary())
	if err != nil || werr != nil || !rep.OK() {
		return errFailed
	}
	return nil
}

// writeFile writes a file whole through write, replacing it atomically.
func writeFile(path string, write func(io.Writer) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
