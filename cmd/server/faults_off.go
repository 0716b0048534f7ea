//go:build !handoff_faults

package main

import (
	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// injectFaults does nothing: faults exist only in builds with the
// handoff_faults tag, which the e2e tests of bad deploys use.
func injectFaults(func(string) string, *upgrade.Upgrader, zerolog.Logger) {}

// faultState returns state as it is.
func faultState(_ func(string) string, state []byte) []byte { return state }
