package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "handoff.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:8080" || c.DrainTimeout != 30*time.Second || c.UpgradeTimeout != time.Minute ||
		c.LogFormat != "auto" || c.LogLevel != "info" || c.PIDFile != "" {
		t.Errorf("defaults = %+v", c)
	}
}

// Flags override the environment, which overrides the file.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, "addr = \"127.0.0.1:1111\"\ndrain-timeout = \"11s\"\nupgrade-timeout = \"12s\"\nlog-level = \"warn\"\n")
	c, err := parseConfig(
		[]string{"-config", file, "-addr", "127.0.0.1:3333"},
		env(map[string]string{"HANDOFF_ADDR": "127.0.0.1:2222", "HANDOFF_DRAIN_TIMEOUT": "22s"}),
		io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:3333" {
		t.Errorf("addr = %s, want the flag's 127.0.0.1:3333", c.Addr)
	}
	if c.DrainTimeout != 22*time.Second {
		t.Errorf("drain-timeout = %v, want the environment's 22s", c.DrainTimeout)
	}
	if c.UpgradeTimeout != 12*time.Second || c.LogLevel != "warn" {
		t.Errorf("upgrade-timeout %v log-level %s, want the file's 12s and warn", c.UpgradeTimeout, c.LogLevel)
	}
}

func TestConfigFileFromEnvironment(t *testing.T) {
	file := writeFile(t, "pid-file = \"x.pid\"\n")
	c, err := parseConfig(nil, env(map[string]string{"HANDOFF_CONFIG": file}), io.Discard)
	if err != nil || c.PIDFile != "x.pid" {
		t.Errorf("HANDOFF_CONFIG: pid-file %q, error %v; want x.pid from the file", c.PIDFile, err)
	}
}

// Every bad input is a usage error whose message names what to fix.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string // config file body, passed with -config when set
		want []string
	}{
		{"unknown flag", []string{"-nope"}, nil, "", []string{"-nope"}},
		{"bad duration flag", []string{"-drain-timeout", "soon"}, nil, "", []string{"-drain-timeout", "soon"}},
		{"negative duration", []string{"-drain-timeout", "-1s"}, nil, "", []string{"-drain-timeout", "negative"}},
		{"zero drain timeout", []string{"-drain-timeout", "0"}, nil, "", []string{"-drain-timeout", "more than 0"}},
		{"bad addr", []string{"-addr", "8080"}, nil, "", []string{"-addr", "host:port"}},
		{"bad grpc addr", []string{"-grpc-addr", "9090"}, nil, "", []string{"-grpc-addr", "host:port"}},
		{"bad udp addr in file", nil, nil, "udp-addr = \"localhost\"\n", []string{"line 1", `key "udp-addr"`, "host:port"}},
		{"bad log format", []string{"-log-format", "xml"}, nil, "", []string{"-log-format", "json, console or auto"}},
		{"bad log level", []string{"-log-level", "loud"}, nil, "", []string{"-log-level"}},
		{"probation too long", []string{"-probation", "2m"}, nil, "", []string{"-probation", "-upgrade-timeout"}},
		{"stray argument", []string{"serve"}, nil, "", []string{`"serve"`}},
		{"bad env", nil, map[string]string{"HANDOFF_UPGRADE_TIMEOUT": "forever"}, "", []string{"HANDOFF_UPGRADE_TIMEOUT", "-upgrade-timeout"}},
		{"unknown file key", nil, nil, "addr = \"127.0.0.1:1\"\n\ndrian-timeout = \"1s\"\n", []string{"line 3", `"drian-timeout"`, "unknown key"}},
		{"bad file value", nil, nil, "# comment\ndrain-timeout = \"1 minute\"\n", []string{"line 2", `"drain-timeout"`}},
		{"file value of wrong kind", nil, nil, "addr = [1, 2]\n", []string{"line 1", `"addr"`}},
		{"file syntax", nil, nil, "addr = \"127.0.0.1:1\"\nthis is not toml\n", []string{"line 2"}},
		{"file table", nil, nil, "[server]\naddr = \"x\"\n", []string{"line 1", "[server]", "no [sections]"}},
		// Regressions (issue 10 item 11): a table was reported at line 0;
		// a bad boolean said only "parse error".
		{"file table after keys", nil, nil, "addr = \"127.0.0.1:1\"\n\n[server]\nx = 1\n", []string{"line 3", "[server]"}},
		{"file array table", nil, nil, "# c\n[[server]]\n", []string{"line 2", "[[server]]"}},
		{"file dotted key", nil, nil, "# c\nserver.addr = \"x\"\n", []string{"line 2", `"server.addr"`}},
		{"file dotted known key", nil, nil, "\naddr.host = \"x\"\n", []string{"line 2", `"addr.host"`}},
		{"file inline table", nil, nil, "\naddr = { host = \"x\" }\n", []string{"line 2", `"addr"`, "not a table"}},
		{"file multi-line array", nil, nil, "\n\naddr = [\n  1,\n]\n", []string{"line 3", `"addr"`, "not an array"}},
		{"file escaped key", nil, nil, "# c\n\"\\u0061ddr\" = [1]\n", []string{"line 2", `"addr"`}},
		{"file date", nil, nil, "drain-timeout = 2024-01-01\n", []string{"line 1", `"drain-timeout"`}},
		{"bad bool env", nil, map[string]string{"HANDOFF_ALLOW_REMOTE_CONTROL": "yes"}, "", []string{"HANDOFF_ALLOW_REMOTE_CONTROL", "-allow-remote-control", `"yes"`, "true", "false", "1", "0"}},
		{"bad bool file", nil, nil, "# c\nallow-remote-control = \"yes\"\n", []string{"line 2", `"allow-remote-control"`, `"yes"`, "true", "false"}},
		{"bad bool flag", []string{"-allow-remote-control=yes"}, nil, "", []string{"-allow-remote-control", `"yes"`, "true", "false"}},
		{"version in file", nil, nil, "version = true\n", []string{`"version"`, "unknown key"}},
		// Regression, found by FuzzConfigFile: a value that parses but
		// fails validation named the flag, not the file line and key.
		{"file value fails validation", nil, nil, "# x\naddr = \"\"\n", []string{"config file", "line 2", `key "addr"`, "host:port"}},
		{"env value fails validation", nil, map[string]string{"HANDOFF_LOG_FORMAT": "xml"}, "", []string{"HANDOFF_LOG_FORMAT", "json, console or auto"}},
		{"missing file", []string{"-config", "/nonexistent/handoff.toml"}, nil, "", []string{"/nonexistent/handoff.toml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, tt.file)}, args...)
			}
			_, err := parseConfig(args, env(tt.env), io.Discard)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("parseConfig(%q) error = %v, want a usage error", args, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// Regression (issue 10 item 11): HANDOFF_VERSION=v1.2.3 in the
// environment was read as -version and failed start-up with "parse
// error", and HANDOFF_VERSION=1 made the server print its version and exit
// 0. -version and -h are flags only: no environment variable sets them.
func TestConfigFlagOnly(t *testing.T) {
	for _, e := range []map[string]string{
		{"HANDOFF_VERSION": "v1.2.3"},
		{"HANDOFF_VERSION": "1"},
		{"HANDOFF_VERSION": "true"},
		{"HANDOFF_H": "1", "HANDOFF_HELP": "true"},
	} {
		var out bytes.Buffer
		c, err := parseConfig(nil, env(e), &out)
		if err != nil {
			t.Errorf("environment %v: %v, want it ignored", e, err)
			continue
		}
		if c.ShowVersion || out.Len() > 0 {
			t.Errorf("environment %v: -version %v, printed %q; want neither", e, c.ShowVersion, out.String())
		}
	}
	// With the variable set, the server starts instead of printing its
	// version and exiting 0: it gets as far as the data directory.
	dir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(dir, nil, 0o600)
	var out bytes.Buffer
	err := run(t.Context(), []string{"-data-dir", dir}, env(map[string]string{"HANDOFF_VERSION": "1"}), &out, io.Discard)
	if err == nil || out.Len() > 0 {
		t.Errorf("run with HANDOFF_VERSION=1: error %v, printed %q; want it to start (and fail on -data-dir %s, a file)", err, out.String(), dir)
	}
}

func TestRunVersionAndHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-version"}, env(nil), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != version {
		t.Errorf("-version printed %q, want %q", got, version)
	}
	out.Reset()
	if err := run(t.Context(), []string{"-h"}, env(nil), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "-drain-timeout") || !strings.Contains(out.String(), "HANDOFF_DRAIN_TIMEOUT") {
		t.Errorf("-h printed %q, want the flags and their environment variables", out.String())
	}
}

// FuzzConfigFile feeds arbitrary files to the config parser: it never
// panics, and it either yields a config that passes validation or a usage
// error that names the file.
func FuzzConfigFile(f *testing.F) {
	f.Add("addr = \"127.0.0.1:8080\"\ndrain-timeout = \"20s\"\n")
	f.Add("# comment\nlog-level = \"debug\"\nprobation = \"1s\"\n")
	f.Add("drain-timeout = 30\n")
	f.Add("[server]\naddr = \"x\"\n")
	f.Add("addr = \"127.0.0.1:1\"\naddr = \"127.0.0.1:2\"\n")
	f.Add("allow-remote-control = true\ncontrol-addr = \"0.0.0.0:9\"\n")
	f.Add("\"drain-timeout\" = \"1s\"\n'idle-grace' = \"2s\"\n")
	f.Add("version = true\n")
	f.Add("addr = \"127.0.0.1:1\"\n[server]\n")
	f.Add("a.b = 1\n")
	f.Add("allow-remote-control = \"yes\"\n")
	f.Fuzz(func(t *testing.T, body string) {
		path := filepath.Join(t.TempDir(), "fuzz.toml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := parseConfig([]string{"-config", path}, env(nil), io.Discard)
		if err != nil {
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), path) {
				t.Errorf("config %q: error %v, want a usage error naming the file", body, err)
			}
			if strings.Contains(err.Error(), "line 0") {
				t.Errorf("config %q: error %v names line 0, want the real line", body, err)
			}
			return
		}
		if err := c.validate(); err != nil {
			t.Errorf("config %q parsed but does not validate: %v", body, err)
		}
	})
}
