package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// ctlRequest returns the request of each verb of server ctl.
func ctlRequest(verb string) (method, path string, ok bool) {
	switch verb {
	case "status":
		return "GET", "/status", true
	case "upgrade":
		return "POST", "/upgrade", true
	case "shutdown":
		return "POST", "/shutdown", true
	}
	return "", "", false
}

// runCtl is `server ctl status|upgrade|shutdown [flags]`: it reaches the
// control API of the server started with the same settings (flags,
// HANDOFF_* variables, -config file), prints a short summary or, with
// -json, the answer, and fails with the reason when the action failed.
func runCtl(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("server ctl: want one of status, upgrade, shutdown, then flags (server ctl upgrade -json)")
	}
	verb := args[0]
	method, path, ok := ctlRequest(verb)
	if !ok {
		return usagef("server ctl %q: want one of status, upgrade, shutdown, then flags (server ctl upgrade -json)", verb)
	}
	var asJSON bool
	var fields string
	var timeout time.Duration
	cfg, err := parseConfig(args[1:], getenv, stdout, func(fs *flag.FlagSet) {
		boolFlag(fs, &asJSON, "json", false, "ctl: print the server's JSON answer")
		fs.StringVar(&fields, "field", "", "ctl: print these `fields` of the JSON answer, comma-separated (pid,version or upgrades.failed), one value per line: "+
			"a string as is, anything else as JSON; for scripts, which then need no JSON parser")
		durationFlag(fs, &timeout, "timeout", 0, "ctl: how long to wait for the answer (default: -upgrade-timeout plus -probation plus 30s for upgrade, 10s otherwise)")
	})
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if asJSON && fields != "" {
		return usagef("server ctl: -json and -field: give one of them")
	}
	if timeout == 0 {
		timeout = 10 * time.Second
		if verb == "upgrade" {
			timeout = cfg.UpgradeTimeout + cfg.Probation + 30*time.Second
		}
	}
	b, err := os.ReadFile(cfg.tokenFile())
	if err != nil {
		return fmt.Errorf("read control token: %w (is the server running with the same -data-dir or -control-token-file?)", err)
	}
	token := strings.TrimSpace(string(b))

	network, addr := cfg.controlListen()
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://handoff-control"+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("reach the control API at %s %s: %w (is the server running?)", network, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(body, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		if asJSON {
			stdout.Write(body)
		}
		return fmt.Errorf("%s: %s (HTTP %d)", verb, e.Error, resp.StatusCode)
	}
	if asJSON {
		_, err := stdout.Write(body)
		return err
	}
	if fields != "" {
		return printFields(stdout, verb, body, strings.Split(fields, ","))
	}
	return printSummary(stdout, verb, body)
}

// printFields writes the value of each field of the JSON object body, one
// a line: a string as is, anything else (a number, an object) as compact
// JSON, null as an empty line. A field is a name, or names joined with
// dots for a field of a nested object (last_upgrade.ok). All are checked
// before anything is written, so a script reads all or nothing.
func printFields(w io.Writer, verb string, body []byte, fields []string) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	var out bytes.Buffer
	for _, f := range fields {
		v, err := lookupField(top, f)
		if err != nil {
			return fmt.Errorf("%s -field %s: %w", verb, f, err)
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			if strings.ContainsAny(s, "\r\n") {
				return fmt.Errorf("%s -field %s: the value spans lines; use -json", verb, f)
			}
			out.WriteString(s)
		} else if string(v) != "null" {
			if err := json.Compact(&out, v); err != nil {
				return fmt.Errorf("decode answer: %w", err)
			}
		}
		out.WriteByte('\n')
	}
	_, err := w.Write(out.Bytes())
	return err
}

// lookupField returns the value of a field (a.b.c) of obj.
func lookupField(obj map[string]json.RawMessage, field string) (json.RawMessage, error) {
	names := strings.Split(field, ".")
	for i, name := range names {
		v, ok := obj[name]
		if !ok {
			have := make([]string, 0, len(obj))
			for k := range obj {
				have = append(have, k)
			}
			sort.Strings(have)
			return nil, fmt.Errorf("the answer has no field %q (it has %s)", strings.Join(names[:i+1], "."), strings.Join(have, ", "))
		}
		if i == len(names)-1 {
			return v, nil
		}
		obj = nil
		if err := json.Unmarshal(v, &obj); err != nil || obj == nil {
			return nil, fmt.Errorf("field %q is not an object", strings.Join(names[:i+1], "."))
		}
	}
	return nil, fmt.Errorf("empty field name")
}

// printSummary writes a line or two for a person.
func printSummary(w io.Writer, verb string, body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	switch verb {
	case "upgrade":
		var r upgradeResult
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		fmt.Fprintf(w, "upgraded: generation %d, pid %d, version %s (ready in %.0f ms)\n", r.Generation, r.PID, r.Version, r.DurationMS)
	case "shutdown":
		fmt.Fprintln(w, "stopping: the server drains, runs its cleanup and exits")
	case "status":
		var s serverStatus
		if err := dec.Decode(&s); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		fmt.Fprintf(w, "pid %d, generation %d, version %s: %s, up %s\n", s.PID, s.Generation, s.Version, s.State,
			time.Duration(s.Uptime).Round(time.Second))
		fmt.Fprintf(w, "%d requests in flight on %d connections; %d served; upgrades: %d succeeded, %d failed\n",
			s.InFlight, s.Connections, s.Requests, s.Upgrades.Succeeded, s.Upgrades.Failed)
		if sv := s.Supervisor; sv != nil {
			fmt.Fprintf(w, "supervisor: pid %d, version %s, up %s\n", sv.PID, sv.Version, time.Since(sv.StartedAt).Round(time.Second))
		}
		if u := s.LastUpgrade; u != nil {
			outcome := "ok"
			if !u.OK {
				outcome = "failed: " + u.Error
			}
			fmt.Fprintf(w, "last upgrade (%s, %s): %s in %.0f ms\n", u.Source, u.StartedAt.Local().Format(time.DateTime), outcome,
				u.Duration.Milliseconds())
		}
		if d := s.LastDrain; d != nil {
			fmt.Fprintf(w, "last drain (generation %d, %s): %d connections in %.0f ms, %d force-closed\n",
				d.Gen, d.Reason, d.ConnectionsAtStart, d.Duration.Milliseconds(), d.Closed.Forced)
		}
		if s.Cache != nil {
			fmt.Fprintf(w, "cache: %d entries, hit ratio %.2f\n", s.Cache.Entries, s.Cache.HitRatio)
		}
		if s.UpgradePending {
			fmt.Fprintln(w, "an upgrade is queued")
		}
	}
	return nil
}
