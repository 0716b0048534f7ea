package main

import (
	"bufio"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The shipped deployment files must run with flags this server accepts,
// and their timeouts must cover a full stop: shutdown delay, drain, and
// the two cleanup steps (persist the cache, close the database).

// stopBudget is the longest a graceful stop takes with cfg.
func stopBudget(cfg *config) time.Duration {
	return cfg.ShutdownDelay + cfg.DrainTimeout + 2*cfg.CleanupTimeout
}

func TestKubernetesDeploymentFlags(t *testing.T) {
	f, err := os.Open("../../deploy/kubernetes/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var args []string
	grace := -1
	inArgs := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "terminationGracePeriodSeconds:"):
			grace, _ = strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "terminationGracePeriodSeconds:")))
		case line == "args:":
			inArgs = true
		case inArgs && strings.HasPrefix(line, "- "):
			args = append(args, strings.TrimPrefix(line, "- "))
		default:
			inArgs = false
		}
	}
	// -config names the file the ConfigMap mounts: check that file.
	conf := configMapFile(t, "../../deploy/kubernetes/configmap.yaml", "handoff.toml")
	for i, a := range args {
		if strings.HasPrefix(a, "-config=") {
			args[i] = "-config=" + conf
		}
	}
	cfg, err := parseConfig(args, env(nil), io.Discard)
	if err != nil {
		t.Fatalf("deployment.yaml args %q: %v", args, err)
	}
	// The image's entrypoint supplies -supervise, so a reload inside the
	// pod is a hot restart rather than a container restart.
	df, err := os.ReadFile("../../deploy/kubernetes/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(df), `ENTRYPOINT ["/server", "-supervise"]`) {
		t.Error("the Dockerfile's entrypoint does not run the supervisor (-supervise)")
	}
	if cfg.ConfigFile != conf {
		t.Error("deployment.yaml passes no -config: the ConfigMap is for a reload inside a running pod")
	}
	if cfg.ShutdownDelay == 0 {
		t.Error("deployment.yaml sets no -shutdown-delay; endpoints need a moment to drop the pod")
	}
	if budget := stopBudget(cfg); time.Duration(grace)*time.Second <= budget {
		t.Errorf("terminationGracePeriodSeconds %d does not cover delay+drain+cleanup = %v", grace, budget)
	}
}

// configMapFile writes the value of key (a "key: |" block) of a ConfigMap
// to a file and returns its path.
func configMapFile(t *testing.T, path, key string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.TrimSpace(line) == key+": |":
			in = true
		case in && (strings.HasPrefix(line, "    ") || strings.TrimSpace(line) == ""):
			out = append(out, strings.TrimPrefix(line, "    "))
		default:
			in = false
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s has no %q block", path, key)
	}
	f := t.TempDir() + "/" + key
	if err := os.WriteFile(f, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestSystemdUnit checks handoff.service against the server: supervisor
// mode, a reload that runs ctl upgrade with the same config (so that a
// failed upgrade fails systemctl reload), and timeouts that cover a
// graceful stop and the longest upgrade, with the example config file.
// e2e/systemd runs the unit under a real systemd.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../deploy/systemd/handoff.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			unit[k] = v
		}
	}
	for k, want := range map[string]string{"Type": "notify", "NotifyAccess": "main", "KillMode": "mixed"} {
		if unit[k] != want {
			t.Errorf("handoff.service %s=%q, want %q", k, unit[k], want)
		}
	}
	if _, ok := unit["PIDFile"]; ok {
		t.Error("handoff.service sets PIDFile=; the supervisor is the main process for the life of the service")
	}
	const exampleConfig = "../../deploy/systemd/handoff.toml"
	// configArgs replaces the installed config file's path with the
	// example's, which the README installs there.
	configArgs := func(key string) []string {
		args := strings.Fields(unit[key])
		if len(args) < 2 {
			t.Fatalf("handoff.service %s=%q: want a command with flags", key, unit[key])
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-config" {
				if args[i+1] != "/etc/handoff/handoff.toml" {
					t.Errorf("handoff.service %s: -config %s, want /etc/handoff/handoff.toml (the README installs it there)", key, args[i+1])
				}
				args[i+1] = exampleConfig
			}
		}
		return args
	}
	start := configArgs("ExecStart")
	if !slices.Contains(start, "-supervise") {
		t.Errorf("handoff.service ExecStart=%q: want -supervise, so that the main pid never changes", unit["ExecStart"])
	}
	cfg, err := parseConfig(start[1:], env(nil), io.Discard)
	if err != nil {
		t.Fatalf("ExecStart flags %q: %v", start[1:], err)
	}
	// ExecReload runs ctl from the supervisor's executable: the binary at
	// ExecStart's path is the new one, which may not run at all.
	const reloadPrefix, reloadSuffix = "/bin/sh -c 'exec /proc/$MAINPID/exe ctl upgrade ", "'"
	if !strings.HasPrefix(unit["ExecReload"], reloadPrefix) || !strings.HasSuffix(unit["ExecReload"], reloadSuffix) {
		t.Fatalf("handoff.service ExecReload=%q, want %s...%s: ctl upgrade waits for the outcome", unit["ExecReload"], reloadPrefix, reloadSuffix)
	}
	unit["ExecReload"] = "ctl " + strings.TrimSuffix(strings.TrimPrefix(unit["ExecReload"], reloadPrefix), reloadSuffix)
	reload := configArgs("ExecReload")
	if !slices.Contains(reload, exampleConfig) {
		t.Errorf("handoff.service ExecReload=%q: want the same -config as ExecStart, to find the control socket", unit["ExecReload"])
	}
	if _, err := parseConfig(reload[1:], env(nil), io.Discard); err != nil {
		t.Errorf("ExecReload ctl upgrade flags %q: %v", reload[1:], err)
	}
	stop, err := time.ParseDuration(unit["TimeoutStopSec"])
	if err != nil {
		t.Fatal(err)
	}
	if budget := stopBudget(cfg); stop <= budget {
		t.Errorf("TimeoutStopSec=%v does not cover delay+drain+cleanup = %v", stop, budget)
	}
	// TimeoutStartSec also bounds ExecReload=, that is ctl upgrade, which
	// waits up to -upgrade-timeout plus -probation plus 30s.
	startTimeout, err := time.ParseDuration(unit["TimeoutStartSec"])
	if wait := cfg.UpgradeTimeout + cfg.Probation + 30*time.Second; err != nil || startTimeout <= wait {
		t.Errorf("TimeoutStartSec=%s must exceed ctl upgrade's wait, -upgrade-timeout plus -probation plus 30s (%v): it bounds systemctl reload", unit["TimeoutStartSec"], wait)
	}
}
