// Package e2e holds the end-to-end tests of handoff: they build the real
// server binary, start it, send it real traffic on 127.0.0.1, and restart
// it with signals and through its control socket. Everything they start is
// tracked by pid and killed when a test ends.
package e2e
