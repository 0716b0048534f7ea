package main

import (
	"bufio"
	"io"
	"os"
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
	cfg, err := parseConfig(args, env(nil), io.Discard)
	if err != nil {
		t.Fatalf("deployment.yaml args %q: %v", args, err)
	}
	if cfg.ShutdownDelay == 0 {
		t.Error("deployment.yaml sets no -shutdown-delay; endpoints need a moment to drop the pod")
	}
	if budget := stopBudget(cfg); time.Duration(grace)*time.Second <= budget {
		t.Errorf("terminationGracePeriodSeconds %d does not cover delay+drain+cleanup = %v", grace, budget)
	}
}

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
	for k, want := range map[string]string{"Type": "notify-reload", "NotifyAccess": "main", "KillMode": "control-group"} {
		if unit[k] != want {
			t.Errorf("handoff.service %s=%q, want %q", k, unit[k], want)
		}
	}
	if _, ok := unit["PIDFile"]; ok {
		t.Error("handoff.service sets PIDFile=; MAINPID= keeps systemd's view right without one")
	}
	args := strings.Fields(unit["ExecStart"])[1:]
	cfg, err := parseConfig(args, env(nil), io.Discard)
	if err != nil && !strings.Contains(err.Error(), "config file") {
		t.Fatalf("ExecStart flags %q: %v", args, err)
	}
	if cfg == nil { // the config file is not on this machine: check the rest
		cfg, err = parseConfig(args[2:], env(nil), io.Discard)
		if err != nil {
			t.Fatalf("ExecStart flags %q: %v", args[2:], err)
		}
	}
	stop, err := time.ParseDuration(unit["TimeoutStopSec"])
	if err != nil {
		t.Fatal(err)
	}
	if budget := stopBudget(cfg); stop <= budget {
		t.Errorf("TimeoutStopSec=%v does not cover delay+drain+cleanup = %v", stop, budget)
	}
	start, err := time.ParseDuration(unit["TimeoutStartSec"])
	if err != nil || start <= cfg.UpgradeTimeout+cfg.Probation {
		t.Errorf("TimeoutStartSec=%s must exceed -upgrade-timeout plus -probation (%v): a reload waits that long", unit["TimeoutStartSec"], cfg.UpgradeTimeout+cfg.Probation)
	}
}
