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

	"github.com/cloudflare/tableflip"
)

// Listen returns a listener for addr: the previous generation's (or the
// supervisor's) socket when it had one for the same address, or a new one.
// For unix sockets the file is created with mode 0600, and a stale one left
// by a crashed process is replaced. It must be called before Ready.
func (u *Upgrader) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	if err := u.checkOpen(); err != nil {
		return nil, err
	}
	key, err := CanonicalAddr(network, addr)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	inherited := false
	switch u.mode {
	case modeStandalone:
		ln, err = bind(ctx, network, key)
	case modeSupervised:
		ln, inherited, err = u.listenSupervised(ctx, network, key)
	default:
		ln, err = u.tf.ListenWithCallback(network, key, func(network, addr string) (net.Listener, error) {
			return bind(ctx, network, addr)
		})
		inherited = err == nil && u.up != nil && u.inheritedKey(network, key)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	u.listened(network, key, ln.Addr().String(), inherited, "")
	return ln, nil
}

// ListenPacket is Listen for datagram sockets (udp, unixgram). A datagram
// the kernel queued on the socket is read by whichever generation reads
// next, so none is lost in a handoff.
func (u *Upgrader) ListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error) {
	if err := u.checkOpen(); err != nil {
		return nil, err
	}
	key, err := CanonicalAddr(network, addr)
	if err != nil {
		return nil, err
	}
	var pc net.PacketConn
	inherited := false
	switch u.mode {
	case modeStandalone:
		var lc net.ListenConfig
		pc, err = lc.ListenPacket(ctx, network, key)
	case modeSupervised:
		pc, inherited, err = u.listenPacketSupervised(ctx, network, key)
	default:
		pc, err = u.tf.ListenPacketWithCallback(network, key, func(network, addr string) (net.PacketConn, error) {
			var lc net.ListenConfig
			return lc.ListenPacket(ctx, network, addr)
		})
		inherited = err == nil && u.up != nil && u.inheritedKey(network, key)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	u.listened(network, key, pc.LocalAddr().String(), inherited, "")
	return pc, nil
}

// activatedKey is the key under which a socket-activated listener is
// passed to later generations: its name, since systemd, not the address
// in the configuration, decides where it listens.
func activatedKey(name string) string { return "systemd:" + name }

// ListenNamed is Listen for a socket that systemd may pass by socket
// activation, under FileDescriptorName name. The first generation (or the
// supervisor) takes it from systemd, and later ones inherit it under that
// name, whatever addr says; without activation it is Listen(ctx, network,
// addr).
func (u *Upgrader) ListenNamed(ctx context.Context, name, network, addr string) (net.Listener, error) {
	if err := u.checkOpen(); err != nil {
		return nil, err
	}
	key := activatedKey(name)
	switch u.mode {
	case modeStandalone:
		return u.Listen(ctx, network, addr)
	case modeSupervised:
		for _, nw := range []string{"tcp", "unix"} {
			if f := u.up.take(nw + " " + key); f != nil {
				ln, err := net.FileListener(f)
				f.Close()
				if err != nil {
					return nil, fmt.Errorf("socket-activated %s: %w", name, err)
				}
				u.listened(nw, key, ln.Addr().String(), true, name)
				return ln, nil
			}
		}
		return u.Listen(ctx, network, addr)
	}
	for _, nw := range []string{"tcp", "unix"} {
		ln, err := u.tf.Listener(nw, key)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", name, err)
		}
		if ln != nil {
			u.listened(nw, key, ln.Addr().String(), true, name)
			return ln, nil
		}
	}
	f := u.activated[name]
	if f == nil {
		return u.Listen(ctx, network, addr)
	}
	delete(u.activated, name)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("socket-activated %s: %w", name, err)
	}
	tl, ok := ln.(tableflip.Listener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("socket-activated %s: %T cannot be passed on", name, ln)
	}
	nw := ln.Addr().Network()
	if err := u.tf.AddListener(nw, key, tl); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket-activated %s: %w", name, err)
	}
	if want, err := CanonicalAddr(network, addr); err != nil || want != ln.Addr().String() {
		u.log.Info().Str("name", name).Str("configured_addr", addr).Str("addr", ln.Addr().String()).
			Msg("socket activation: serving on the socket systemd passed, not the configured address")
	}
	u.listened(nw, key, ln.Addr().String(), false, name)
	return ln, nil
}

func (u *Upgrader) checkOpen() error {
	u.regMu.Lock()
	defer u.regMu.Unlock()
	if u.regClosed {
		return errRegistrationClosed
	}
	return nil
}

// listened records a socket for the next generation's hello and logs it.
func (u *Upgrader) listened(network, key, addr string, inherited bool, name string) {
	u.regMu.Lock()
	u.listenKeys = append(u.listenKeys, network+" "+key)
	u.regMu.Unlock()
	ev := u.log.Info().Str("network", network).Str("addr", addr).Bool("inherited", inherited)
	if name != "" {
		ev = ev.Str("activation_name", name)
	}
	ev.Msg("listening")
}

// inheritedKey reports whether the previous generation passed a socket for
// key; tableflip does not say whether Listen inherited or bound.
func (u *Upgrader) inheritedKey(network, key string) bool {
	for _, k := range u.up.hello.Listeners {
		if k == network+" "+key {
			return true
		}
	}
	return false
}

// CanonicalAddr returns the form of addr under which a listener is passed to
// the next generation. tableflip matches inherited sockets by the exact
// address string, so "localhost:8080" and "127.0.0.1:8080" must become one
// key: host names are resolved, port names become numbers, and unix socket
// paths become absolute. A zero port is kept as given, since it names no
// particular socket.
func CanonicalAddr(network, addr string) (string, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", addr, err)
		}
		if port == "0" {
			return addr, nil
		}
		var ip net.IP
		var zone string
		var p int
		if strings.HasPrefix(network, "udp") {
			ua, err := net.ResolveUDPAddr(network, addr)
			if err != nil {
				return "", fmt.Errorf("address %q: %w", addr, err)
			}
			ip, zone, p = ua.IP, ua.Zone, ua.Port
		} else {
			ta, err := net.ResolveTCPAddr(network, addr)
			if err != nil {
				return "", fmt.Errorf("address %q: %w", addr, err)
			}
			ip, zone, p = ta.IP, ta.Zone, ta.Port
		}
		if host == "" {
			return net.JoinHostPort("", fmt.Sprint(p)), nil
		}
		return (&net.TCPAddr{IP: ip, Zone: zone, Port: p}).String(), nil
	case "unix", "unixgram", "unixpacket":
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
		return "", fmt.Errorf("network %q: want tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixgram or unixpacket", network)
	}
}

// bind opens a fresh listening socket. A unix socket file is created with
// mode 0600; a stale one left by a process that died is replaced, but a
// socket some live process still accepts on is an error.
func bind(ctx context.Context, network, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	if !strings.HasPrefix(network, "unix") || strings.HasPrefix(addr, "@") {
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
