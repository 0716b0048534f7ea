package upgrade

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// envSupervisor names the fd of a supervised generation's link to its
// supervisor.
const envSupervisor = "HANDOFF_SUPERVISOR_LINK"

// joinSupervisor is a supervised generation's start: the link, the hello,
// and the sockets the supervisor holds.
func (u *Upgrader) joinSupervisor() error {
	fd, err := strconv.Atoi(os.Getenv(envSupervisor))
	os.Unsetenv(envSupervisor) // not for processes this one starts
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q: want the fd of the link to the supervisor", envSupervisor, os.Getenv(envSupervisor))
	}
	unix.CloseOnExec(fd)
	l, err := linkFromFile(os.NewFile(uintptr(fd), "handoff-link"))
	if err != nil {
		return err
	}
	m, _, err := l.recvType(10*time.Second, msgHello)
	if err != nil || m.Hello == nil {
		l.close()
		return fmt.Errorf("read hello from the supervisor: %v", err)
	}
	h := *m.Hello
	if len(h.FDs) != len(h.Listeners) {
		l.close()
		return fmt.Errorf("hello from the supervisor names %d sockets and %d fds", len(h.Listeners), len(h.FDs))
	}
	up := &upstream{kind: "supervisor", link: l, hello: h, files: map[string]*os.File{}}
	for i, key := range h.Listeners {
		unix.CloseOnExec(h.FDs[i])
		up.files[key] = os.NewFile(uintptr(h.FDs[i]), key)
	}
	if h.StderrFD > 0 {
		unix.CloseOnExec(h.StderrFD)
		up.stderr = os.NewFile(uintptr(h.StderrFD), "stderr")
	}
	if err := l.send(message{Type: msgJoined, PID: os.Getpid()}, 5*time.Second); err != nil {
		l.close()
		return err
	}
	u.up = up
	return nil
}

// take returns the socket the supervisor passed for key, once.
func (up *upstream) take(key string) *os.File {
	up.mu.Lock()
	defer up.mu.Unlock()
	f := up.files[key]
	delete(up.files, key)
	return f
}

// closeUntaken closes the passed sockets nobody took; the supervisor
// closes its copies once this generation has taken over.
func (up *upstream) closeUntaken() {
	up.mu.Lock()
	defer up.mu.Unlock()
	for k, f := range up.files {
		f.Close()
		delete(up.files, k)
	}
}

// listenSupervised returns the supervisor's socket for key, or binds a new
// one and gives the supervisor a copy to keep for later generations.
func (u *Upgrader) listenSupervised(ctx context.Context, network, addr string) (net.Listener, bool, error) {
	key := network + " " + addr
	if f := u.up.take(key); f != nil {
		ln, err := net.FileListener(f)
		f.Close()
		return ln, true, err
	}
	ln, err := bind(ctx, network, addr)
	if err != nil {
		return nil, false, err
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		// The supervisor removes the file when the service stops.
		ul.SetUnlinkOnClose(false)
	}
	if err := u.adopt(key, ln.(interface{ File() (*os.File, error) })); err != nil {
		ln.Close()
		return nil, false, err
	}
	return ln, false, nil
}

func (u *Upgrader) listenPacketSupervised(ctx context.Context, network, addr string) (net.PacketConn, bool, error) {
	key := network + " " + addr
	if f := u.up.take(key); f != nil {
		pc, err := net.FilePacketConn(f)
		f.Close()
		return pc, true, err
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, false, err
	}
	if err := u.adopt(key, pc.(interface{ File() (*os.File, error) })); err != nil {
		pc.Close()
		return nil, false, err
	}
	return pc, false, nil
}

// adopt sends the supervisor a copy of a socket this generation bound.
func (u *Upgrader) adopt(key string, s interface{ File() (*os.File, error) }) error {
	f, err := s.File()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := u.up.send(message{Type: msgAdopt, Key: key}, f); err != nil {
		return fmt.Errorf("give the supervisor the socket %s: %w", key, err)
	}
	return nil
}
