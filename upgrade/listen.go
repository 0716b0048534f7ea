package upgrade

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// CanonicalAddr returns the form of addr under which a listener is passed to
// the next generation. tableflip matches inherited sockets by the exact
// address string, so "localhost:8080" and "127.0.0.1:8080" must become one
// key: host names are resolved, port names become numbers, and unix socket
// paths become absolute. A zero port is kept as given, since it names no
// particular socket.
func CanonicalAddr(network, addr string) (string, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", addr, err)
		}
		if port == "0" {
			return addr, nil
		}
		ta, err := net.ResolveTCPAddr(network, addr)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", addr, err)
		}
		if host == "" {
			return net.JoinHostPort("", fmt.Sprint(ta.Port)), nil
		}
		return ta.String(), nil
	case "unix":
		if addr == "" {
			return "", errors.New("unix socket path is empty")
		}
		if strings.HasPrefix(addr, "@") {
			return addr, nil // abstract namespace: not a path
		}
		abs, err := filepath.Abs(addr)
		if err != nil {
			return "", fmt.Errorf("unix socket %q: %w", addr, err)
		}
		return abs, nil
	default:
		return "", fmt.Errorf("network %q: want tcp, tcp4, tcp6 or unix", network)
	}
}

// bind opens a fresh listening socket. A unix socket file is created with
// mode 0600; a stale one left by a process that died is replaced, but a
// socket some live process still accepts on is an error.
func bind(ctx context.Context, network, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	if network != "unix" || strings.HasPrefix(addr, "@") {
		return lc.Listen(ctx, network, addr)
	}
	if err := removeStaleSocket(addr); err != nil {
		return nil, err
	}
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	// The directory decides who can reach the socket before this chmod;
	// callers keep sockets in a directory of mode 0700.
	if err := os.Chmod(addr, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", addr, err)
	}
	return ln, nil
}

// removeStaleSocket removes path if it is a unix socket that nobody accepts
// on. A path that is not a socket is never removed.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket: remove it or choose another path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another running process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("probe %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}
