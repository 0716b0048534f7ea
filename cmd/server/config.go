package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/rs/zerolog"
)

// config is the server's settings, from (lowest to highest precedence)
// defaults, the config file, HANDOFF_* environment variables, and flags.
type config struct {
	Addr           string
	GRPCAddr       string
	TCPAddr        string
	UDPAddr        string
	PIDFile        string
	DrainTimeout   time.Duration
	UpgradeTimeout time.Duration
	ShutdownDelay  time.Duration
	IdleGrace      time.Duration
	CloseSpread    time.Duration
	CleanupTimeout time.Duration
	Probation      time.Duration
	LogFormat      string
	LogLevel       string
	TLSCert        string
	TLSKey         string
	DataDir        string
	ControlAddr    string
	ControlToken   string
	AllowRemote    bool
	ConfigFile     string
	ShowVersion    bool
	Supervise      bool
	RestartOnCrash bool
}

// controlSocket is the unix socket of the control API in the data directory,
// used unless -control-addr is set.
const controlSocket = "control.sock"

// tokenFile returns the path of the control token file.
func (c *config) tokenFile() string {
	if c.ControlToken != "" {
		return c.ControlToken
	}
	return filepath.Join(c.DataDir, "control.token")
}

// controlListen returns the network and address of the control listener.
func (c *config) controlListen() (network, addr string) {
	if c.ControlAddr != "" {
		return "tcp", c.ControlAddr
	}
	return "unix", filepath.Join(c.DataDir, controlSocket)
}

// usageError is a bad flag, environment variable or config file: the
// server exits with status 2 and the message says what to fix. flag names
// the setting at fault, when there is one.
type usageError struct {
	msg  string
	flag string
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{msg: fmt.Sprintf(format, a...)} }

// badFlag is a usage error about the setting of flag name.
func badFlag(name, format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...), flag: name}
}

// flags defines every setting on fs. The flag names are also the config
// file keys, and, upper-cased with HANDOFF_ in front and _ for -, the
// environment variables.
func (c *config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "`address` of the public HTTP listener")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", "", "`address` of a gRPC listener: the health service and the key-value store (off if empty)")
	fs.StringVar(&c.TCPAddr, "tcp-addr", "", "`address` of a raw TCP listener of the line protocol: each line answered with the generation and the line (off if empty)")
	fs.StringVar(&c.UDPAddr, "udp-addr", "", "`address` of a UDP echo: each datagram answered with the generation and the datagram (off if empty)")
	fs.StringVar(&c.PIDFile, "pid-file", "", "`path` of a PID file naming the serving generation (none if empty)")
	durationFlag(fs, &c.DrainTimeout, "drain-timeout", upgrade.DefaultDrainTimeout, "how long a drain may take before what is left is force-closed")
	durationFlag(fs, &c.UpgradeTimeout, "upgrade-timeout", upgrade.DefaultUpgradeTimeout, "how long a new generation may take to become ready before it is killed")
	durationFlag(fs, &c.ShutdownDelay, "shutdown-delay", 0, "on stop, keep serving this long with /readyz failing before the drain")
	durationFlag(fs, &c.IdleGrace, "idle-grace", upgrade.DefaultIdleGrace, "during a drain, leave a keep-alive connection that went idle less than this ago")
	durationFlag(fs, &c.CloseSpread, "close-spread", upgrade.DefaultCloseSpread, "spread the closing of idle connections over this window")
	durationFlag(fs, &c.CleanupTimeout, "cleanup-timeout", upgrade.DefaultCleanupTimeout, "time bound of each cleanup step")
	durationFlag(fs, &c.Probation, "probation", 0, "a new generation serves beside the old one this long before it reports ready (0: off)")
	fs.StringVar(&c.LogFormat, "log-format", "auto", "log format: json, console, or auto (console when stderr is a terminal)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "`path` of a PEM certificate (chain): serve HTTPS with HTTP/2 instead of HTTP/1.1 and h2c; every generation reads it again, so SIGHUP rotates it")
	fs.StringVar(&c.TLSKey, "tls-key", "", "`path` of the PEM private key of -tls-cert")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "`directory` of the database, the cache snapshot, the control socket and token (created with mode 0700)")
	fs.StringVar(&c.ControlAddr, "control-addr", "", "loopback `host:port` of the control API instead of the unix socket data-dir/control.sock")
	fs.StringVar(&c.ControlToken, "control-token-file", "", "`path` of the control API's bearer token (default data-dir/control.token; created with a random token if missing)")
	boolFlag(fs, &c.AllowRemote, "allow-remote-control", false, "allow a -control-addr that is not a loopback address")
	boolFlag(fs, &c.Supervise, "supervise", false, "stay as a supervisor that holds the sockets and starts every generation as its child, so the pid systemd, a container or a shell started never changes")
	boolFlag(fs, &c.RestartOnCrash, "restart-on-crash", false, "with -supervise: restart a generation that exits on its own, with backoff (default: the supervisor exits 1)")
	fs.StringVar(&c.ConfigFile, "config", "", "`path` of a TOML config file whose keys are these flag names")
	boolFlag(fs, &c.ShowVersion, "version", false, "print the version and exit (a flag only: no environment variable or file key sets it)")
}

// durationValue is a flag.Value for a time.Duration whose parse error says
// what a valid value looks like.
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: use a number with a unit, such as 30s, 1500ms or 2m", s)
	}
	*d = durationValue(v)
	return nil
}

func durationFlag(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationValue)(p), name, usage)
}

// boolValue is a flag.Value for a bool whose parse error names the
// accepted values.
type boolValue bool

func (b *boolValue) String() string   { return strconv.FormatBool(bool(*b)) }
func (b *boolValue) IsBoolFlag() bool { return true }

func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("invalid boolean %q: want true or false (or 1, 0, t, f, TRUE, FALSE)", s)
	}
	*b = boolValue(v)
	return nil
}

func boolFlag(fs *flag.FlagSet, p *bool, name string, value bool, usage string) {
	*p = value
	fs.Var((*boolValue)(p), name, usage)
}

// notInFile are flags that make no sense in a config file: what to read,
// and what to print instead of serving (ctl's output format too).
var notInFile = map[string]bool{"config": true, "version": true, "json": true, "field": true}

// notInEnv are flags that no environment variable sets: a HANDOFF_VERSION
// that a deploy pipeline exports for its own use must not make the server
// print its version and exit 0 (under systemd it would silently stay
// down), nor may a HANDOFF_JSON change the output a script of server ctl
// reads. -h is no flag of the set, so no variable reaches it either.
var notInEnv = map[string]bool{"version": true, "json": true, "field": true}

func envName(flagName string) string {
	return "HANDOFF_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads the settings from args, getenv and the config file,
// and validates them. A *usageError names the flag, variable or file line
// to fix. With -h it writes the usage to out and returns errHelp. extra,
// when set, defines more flags on the same set (those of server ctl).
func parseConfig(args []string, getenv func(string) string, out io.Writer, extra ...func(*flag.FlagSet)) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.flags(fs)
	for _, e := range extra {
		e(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, usageText(fs))
			return nil, errHelp
		}
		return nil, usagef("%v (run with -h for the list of flags)", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q (flags start with -; the only subcommand is ctl)", fs.Arg(0))
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })

	if !explicit["config"] {
		if v := getenv(envName("config")); v != "" {
			c.ConfigFile = v
		}
	}
	var file map[string]fileValue
	if c.ConfigFile != "" {
		var err error
		if file, err = readConfigFile(c.ConfigFile, fs); err != nil {
			return nil, err
		}
	}
	// from says where each setting that did not come from a flag was
	// read, so that an error about it names the variable or file line.
	from := map[string]string{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || explicit[f.Name] || f.Name == "config" {
			return
		}
		if v := getenv(envName(f.Name)); v != "" && !notInEnv[f.Name] {
			from[f.Name] = fmt.Sprintf("environment variable %s (it sets -%s)", envName(f.Name), f.Name)
			if serr := fs.Set(f.Name, v); serr != nil {
				err = usagef("%s: %v", from[f.Name], cleanSetError(serr))
			}
			return
		}
		if fv, ok := file[f.Name]; ok {
			from[f.Name] = fmt.Sprintf("config file %s: line %d: key %q", c.ConfigFile, fv.line, f.Name)
			if serr := fs.Set(f.Name, fv.value); serr != nil {
				err = usagef("%s: %v", from[f.Name], cleanSetError(serr))
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		var ue *usageError
		if errors.As(err, &ue) && from[ue.flag] != "" {
			return nil, usagef("%s: %s", from[ue.flag], ue.msg)
		}
		return nil, err
	}
	return c, nil
}

var errHelp = errors.New("help requested")

// cleanSetError drops the strconv noise from a flag.Value.Set error.
func cleanSetError(err error) string {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return fmt.Sprintf("invalid value %q", ne.Num)
	}
	return err.Error()
}

// validate checks what a single flag's parser cannot, naming the flag.
func (c *config) validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return badFlag("addr", "-addr %q: want host:port, such as 127.0.0.1:8080", c.Addr)
	}
	for _, a := range []struct{ name, v, example string }{
		{"grpc-addr", c.GRPCAddr, "127.0.0.1:9090"}, {"tcp-addr", c.TCPAddr, "127.0.0.1:7070"}, {"udp-addr", c.UDPAddr, "127.0.0.1:7070"},
	} {
		if _, _, err := net.SplitHostPort(a.v); a.v != "" && err != nil {
			return badFlag(a.name, "-%s %q: want host:port, such as %s, or nothing to leave it off", a.name, a.v, a.example)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"drain-timeout", c.DrainTimeout}, {"upgrade-timeout", c.UpgradeTimeout},
		{"shutdown-delay", c.ShutdownDelay}, {"idle-grace", c.IdleGrace},
		{"close-spread", c.CloseSpread}, {"cleanup-timeout", c.CleanupTimeout},
		{"probation", c.Probation},
	} {
		if d.v < 0 {
			return badFlag(d.name, "-%s %v: must not be negative", d.name, d.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"drain-timeout", c.DrainTimeout}, {"upgrade-timeout", c.UpgradeTimeout}, {"cleanup-timeout", c.CleanupTimeout}} {
		if d.v == 0 {
			return badFlag(d.name, "-%s: must be more than 0", d.name)
		}
	}
	if c.Probation > 0 && c.Probation >= c.UpgradeTimeout {
		return badFlag("probation", "-probation %v: must be shorter than -upgrade-timeout (%v)", c.Probation, c.UpgradeTimeout)
	}
	switch c.LogFormat {
	case "json", "console", "auto":
	default:
		return badFlag("log-format", "-log-format %q: want json, console or auto", c.LogFormat)
	}
	if c.DataDir == "" {
		return badFlag("data-dir", "-data-dir: must not be empty")
	}
	if c.ControlAddr != "" {
		host, _, err := net.SplitHostPort(c.ControlAddr)
		if err != nil {
			return badFlag("control-addr", "-control-addr %q: want host:port, such as 127.0.0.1:9090", c.ControlAddr)
		}
		if !c.AllowRemote && !isLoopback(host) {
			return badFlag("control-addr", "-control-addr %q is not a loopback address, and the control API can stop the server: "+
				"use 127.0.0.1 or [::1], or set -allow-remote-control if you mean it", c.ControlAddr)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return badFlag("tls-cert", "-tls-cert and -tls-key go together: give both, or neither")
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		return badFlag("log-level", "-log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// isLoopback reports whether host names only loopback addresses. An empty
// host (all interfaces) does not.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// fileValue is a setting from the config file, as flag text.
type fileValue struct {
	value string
	line  int
}

// readConfigFile reads a TOML file of flag-name keys at the top level.
// Unknown keys, tables ([section], dotted keys, inline tables) and values
// of the wrong kind are errors naming the file, the line and the key.
func readConfigFile(path string, fs *flag.FlagSet) (map[string]fileValue, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("config file: %v", err)
	}
	// Unmarshal checks the whole file and decodes the values; the parser
	// below finds the line of each key.
	var raw map[string]any
	if err := toml.Unmarshal(b, &raw); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, usagef("config file %s: line %d: %v", path, row, de)
		}
		return nil, usagef("config file %s: %v", path, err)
	}
	out := make(map[string]fileValue, len(raw))
	var p unstable.Parser
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			header := "[" + strings.Join(keyParts(e.Key()), ".") + "]"
			if e.Kind == unstable.ArrayTable {
				header = "[" + header + "]"
			}
			return nil, usagef("config file %s: line %d: %s: this file takes no [sections], only top-level keys that are flag names (addr = \"127.0.0.1:8080\")",
				path, nodeLine(&p, e.Key()), header)
		case unstable.KeyValue:
		default:
			continue
		}
		line := nodeLine(&p, e.Key())
		parts := keyParts(e.Key())
		k := parts[0]
		if len(parts) > 1 {
			return nil, usagef("config file %s: line %d: key %q: a dotted key makes a table; use top-level keys that are flag names (addr = \"127.0.0.1:8080\")",
				path, line, strings.Join(parts, "."))
		}
		f := fs.Lookup(k)
		if f == nil || notInFile[k] {
			return nil, usagef("config file %s: line %d: unknown key %q (keys are flag names, such as addr or drain-timeout)", path, line, k)
		}
		var s string
		switch v := raw[k].(type) {
		case string:
			s = v
		case bool:
			s = strconv.FormatBool(v)
		case int64:
			s = strconv.FormatInt(v, 10)
		case float64:
			s = strconv.FormatFloat(v, 'f', -1, 64)
		case map[string]any:
			return nil, usagef("config file %s: line %d: key %q: want a string, number or boolean, not a table", path, line, k)
		case []any:
			return nil, usagef("config file %s: line %d: key %q: want a string, number or boolean, not an array", path, line, k)
		default:
			return nil, usagef("config file %s: line %d: key %q: want a string, number or boolean, not %s", path, line, k, e.Value().Kind)
		}
		out[k] = fileValue{value: s, line: line}
	}
	if err := p.Error(); err != nil { // Unmarshal parsed it: not expected
		return nil, usagef("config file %s: %v", path, err)
	}
	return out, nil
}

// keyParts returns the parts of a key: one, or more for a dotted key.
func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

// nodeLine is the line of the first node of it.
func nodeLine(p *unstable.Parser, it unstable.Iterator) int {
	if !it.Next() {
		return 0
	}
	return p.Shape(it.Node().Raw).Start.Line
}

func usageText(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString(`Usage: server [flags]
       server ctl status|upgrade|shutdown [-json]

Every flag can also be set by an environment variable (HANDOFF_ and the
flag name in capitals, - as _: HANDOFF_DRAIN_TIMEOUT) or by a key of the
same name in the -config file, except -version, -h and ctl's -json and
-field, which are flags only. Flags override the environment, which overrides the file. Booleans
are true or false (or 1, 0, t, f, TRUE, FALSE).

Flags:
`)
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}
