package testkit

import (
	"net"
	"os"
	"testing"
)

// FreeAddr returns a loopback TCP address whose port was free a moment
// ago, for a server the test starts as another process.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// FreeUDPAddr is FreeAddr for UDP.
func FreeUDPAddr(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

// ShortTempDir is a new temporary directory with a short path, removed
// when the test ends: a unix socket's path must fit in 108 bytes, and
// t.TempDir's, which holds the test's name, can be longer.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ho-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
