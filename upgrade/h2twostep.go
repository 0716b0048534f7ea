//go:build !handoff_h2onestep

package upgrade

// twoStepGoAway: HTTP/2 connections end with the two-step close.
const twoStepGoAway = true
