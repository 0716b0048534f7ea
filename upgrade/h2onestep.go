//go:build handoff_h2onestep

package upgrade

// twoStepGoAway is off in this build: net/http's own HTTP/2 server ends
// each connection with its single GOAWAY, as before the two-step close. The
// e2e tests can be run against it (E2E_BUILD_TAGS=handoff_h2onestep) to see
// the streams the two-step close saves.
const twoStepGoAway = false
