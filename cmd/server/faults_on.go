//go:build handoff_faults

package main

import (
	"os"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// injectFaults makes this build misbehave on purpose, for the e2e tests of
// bad deploys. With HANDOFF_FAULT_EXIT_AFTER set to a duration, a new
// generation (not the first) exits with status 3 that long after it
// started serving: a binary that crashes soon after start.
func injectFaults(getenv func(string) string, u *upgrade.Upgrader, log zerolog.Logger) {
	d, err := time.ParseDuration(getenv("HANDOFF_FAULT_EXIT_AFTER"))
	if err != nil || !u.HasParent() {
		return
	}
	time.AfterFunc(d, func() {
		log.Error().Dur("after", d).Msg("injected fault: exiting")
		os.Exit(3) // the crash under test; only main exits otherwise
	})
}

// faultState corrupts the state handed over by the previous generation
// when HANDOFF_FAULT_BAD_STATE is set: a generation that must reject it.
func faultState(getenv func(string) string, state []byte) []byte {
	if getenv("HANDOFF_FAULT_BAD_STATE") == "" {
		return state
	}
	return append([]byte("garbage"), state...)
}
