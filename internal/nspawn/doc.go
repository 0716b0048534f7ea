// Package nspawn boots a real systemd, as PID 1 of a Debian root file
// system under systemd-nspawn, for tests that drive units through
// systemctl.
//
// Rootfs builds the root file system of a Debian suite once, with
// debootstrap, into a cache directory outside the checkout
// ($HANDOFF_CACHE, else $XDG_CACHE_HOME/handoff or ~/.cache/handoff), and
// reuses it across runs. Boot starts a container on a throwaway overlay
// of it, so that no test changes the cache, and tears everything down in
// t.Cleanup: the container is powered off (killed if it will not stop),
// the overlay is gone with the private mount namespace it lives in, and
// the cgroups the container used are removed.
//
// The container has a private network namespace: a test reaches the
// services inside only from inside, by running commands there (Exec,
// Command), with 127.0.0.1 meaning the container's own loopback.
//
// Rules for callers:
//   - Call Require (Rootfs and Boot call it too) before anything else: it
//     skips the test with what is missing and how to install it, or fails
//     it when HANDOFF_NSPAWN_REQUIRED=1 (as in CI).
//   - Binaries copied into the container must not depend on the host's
//     libraries: build Go programs with CGO_ENABLED=0.
//   - Every process started with Command must be waited for before the
//     test ends; powering the container off kills what is left inside.
//
// The host may run without systemd (as in CI): the container is started
// with --register=no --keep-unit, in cgroups of its own made for it under
// the root of the host's unified (and, on a hybrid host, name=systemd)
// hierarchy.
package nspawn
