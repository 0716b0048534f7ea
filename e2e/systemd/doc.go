// Package systemd holds the end-to-end tests of the server under a real
// systemd: Debian trixie's systemd 257 and bookworm's 252, each booted as
// PID 1 in a systemd-nspawn container (see internal/nspawn), driving the
// shipped units in deploy/systemd through systemctl while a client inside
// the container sends load and counts every failed request.
//
// They need root, systemd-nspawn and debootstrap, and skip with what is
// missing where those are not there; .ci/run installs them and makes a
// skip a failure. The first run builds the two root file systems (about
// 90 s each) into a cache directory that later runs reuse.
//
// They are a package of their own, apart from e2e, so that their time
// counts against a test binary timeout of their own.
package systemd
