package testkit

import (
	"testing"
	"time"
)

// pollInterval is how long Wait pauses between tries.
const pollInterval = 10 * time.Millisecond

// Wait calls try, pausing 10 ms between calls, until it returns nil or
// maxWait has passed, and returns try's last error: nil once it succeeded.
// try runs at least once.
func Wait(maxWait time.Duration, try func() error) error {
	deadline := time.Now().Add(maxWait)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollInterval)
	}
}

// WaitFor is Wait that fails the test when maxWait passes, with what it
// waited for and try's last error:
//
//	GET /readyz after SIGTERM: still failing after 10s: status = 200, want 503
func WaitFor(t testing.TB, maxWait time.Duration, what string, try func() error) {
	t.Helper()
	if err := Wait(maxWait, try); err != nil {
		t.Fatalf("%s: still failing after %v: %v", what, maxWait, err)
	}
}
