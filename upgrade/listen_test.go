package upgrade_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
)

func TestCanonicalAddr(t *testing.T) {
	wd, _ := os.Getwd()
	tests := []struct {
		network, addr, want string
	}{
		{"tcp", "127.0.0.1:8080", "127.0.0.1:8080"},
		{"tcp", "localhost:8080", "127.0.0.1:8080"},
		{"tcp", "localhost:http", "127.0.0.1:80"},
		{"tcp", ":8080", ":8080"},
		{"tcp", "0.0.0.0:8080", "0.0.0.0:8080"},
		{"tcp", "[::1]:8080", "[::1]:8080"},
		{"tcp", "[0:0::1]:8080", "[::1]:8080"},
		{"tcp", "127.0.0.1:0", "127.0.0.1:0"},
		{"tcp6", "[::1]:443", "[::1]:443"},
		{"unix", "/run/x.sock", "/run/x.sock"},
		{"unix", "data/../data/x.sock", filepath.Join(wd, "data/x.sock")},
		{"unix", "@abstract", "@abstract"},
		{"udp", "localhost:5353", "127.0.0.1:5353"},
	}
	for _, tt := range tests {
		got, err := upgrade.CanonicalAddr(tt.network, tt.addr)
		if err != nil || got != tt.want {
			t.Errorf("CanonicalAddr(%q, %q) = %q, %v; want %q", tt.network, tt.addr, got, err, tt.want)
		}
	}
	for _, bad := range []struct{ network, addr string }{
		{"tcp", "8080"}, {"tcp", "nosuchhost.invalid:80"}, {"sctp", "127.0.0.1:53"}, {"unix", ""},
	} {
		if got, err := upgrade.CanonicalAddr(bad.network, bad.addr); err == nil {
			t.Errorf("CanonicalAddr(%q, %q) = %q, want an error", bad.network, bad.addr, got)
		}
	}
}

func newStandalone(t *testing.T) *upgrade.Upgrader {
	t.Helper()
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true, Logger: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestListenUnixSocket(t *testing.T) {
	dir := testkit.ShortTempDir(t)
	path := filepath.Join(dir, "control.sock")
	u := newStandalone(t)

	ln, err := u.Listen(t.Context(), "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want 0600", fi.Mode().Perm())
	}

	// A socket some process still accepts on is not taken over.
	if _, err := u.Listen(t.Context(), "unix", path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Listen on a live socket: %v, want an error saying it is in use", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // now stale: the file stays, nobody accepts

	ln2, err := u.Listen(t.Context(), "unix", path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v, want it replaced", err)
	}
	ln2.Close()

	notSocket := filepath.Join(dir, "file")
	os.WriteFile(notSocket, []byte("keep me"), 0o600)
	if _, err := u.Listen(t.Context(), "unix", notSocket); err == nil {
		t.Error("Listen on a regular file: nil error, want a refusal")
	}
	if b, _ := os.ReadFile(notSocket); string(b) != "keep me" {
		t.Error("Listen on a regular file changed the file")
	}
}
