package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"

	"github.com/handoff-go/handoff/internal/kvgrpc"
	"github.com/handoff-go/handoff/internal/lineproto"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// serveOtherProtocols serves what -grpc-addr, -tcp-addr and -udp-addr
// ask for.
func serveOtherProtocols(ctx context.Context, upg *upgrade.Upgrader, cfg *config, kv kvgrpc.KV, log zerolog.Logger) error {
	if cfg.GRPCAddr != "" {
		if err := serveGRPC(ctx, upg, cfg.GRPCAddr, kv, log.With().Str("component", "grpc").Logger()); err != nil {
			return err
		}
	}
	if cfg.TCPAddr != "" {
		if err := serveLines(ctx, upg, cfg.TCPAddr); err != nil {
			return err
		}
	}
	if cfg.UDPAddr != "" {
		if err := serveUDP(ctx, upg, cfg.UDPAddr); err != nil {
			return err
		}
	}
	return nil
}

// serveLines serves the line protocol (internal/lineproto) on addr: each
// line is answered with the generation, a space, and the line.
func serveLines(ctx context.Context, upg *upgrade.Upgrader, addr string) error {
	ln, err := upg.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tcp listener: %w", err)
	}
	prefix := strconv.Itoa(upg.Generation()) + " "
	srv := lineproto.NewServer(func(line string) string { return prefix + line })
	return upg.Serve(ln, srv, &upgrade.ServeOptions{Name: "lines"})
}

// serveUDP serves a datagram echo on addr: each datagram is answered with
// the generation, a space, and the datagram.
func serveUDP(ctx context.Context, upg *upgrade.Upgrader, addr string) error {
	pc, err := upg.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("udp listener: %w", err)
	}
	echo := &udpEcho{prefix: []byte(strconv.Itoa(upg.Generation()) + " ")}
	return upg.ServePacket(pc, echo, &upgrade.ServeOptions{Name: "udp-echo"})
}

// udpEcho is the upgrade.PacketServer of the echo. It answers each
// datagram before it reads the next, so once ServePacket has returned
// nothing is in flight: a datagram still in the socket's buffer is read
// by the next generation, which shares the socket. One exception: the
// Upgrader stops it by closing the socket, and a datagram read just
// before that cannot be answered (WriteTo fails: "use of closed network
// connection"); the UDP e2e test measures how often.
type udpEcho struct {
	prefix   []byte
	requests atomic.Int64
}

func (e *udpEcho) ServePacket(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	out := make([]byte, 0, len(e.prefix)+len(buf))
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() && !errors.Is(err, net.ErrClosed) {
				continue
			}
			return err
		}
		out = append(append(out[:0], e.prefix...), buf[:n]...)
		pc.WriteTo(out, from) // a lost answer is the client's to retry, as with any datagram
		e.requests.Add(1)
	}
}

// Drain has nothing to wait for; see udpEcho.
func (e *udpEcho) Drain(context.Context) upgrade.CloseCounts { return upgrade.CloseCounts{} }

func (e *udpEcho) Stats() upgrade.ServerStats {
	return upgrade.ServerStats{Requests: e.requests.Load()}
}
