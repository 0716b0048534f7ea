package restarttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestClassify(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}
	}
	for _, tc := range []struct {
		err  error
		want Outcome
	}{
		{fmt.Errorf("connect: %w", op(syscall.ECONNREFUSED)), Refused},
		{fmt.Errorf("read: %w", op(syscall.ECONNRESET)), Reset},
		{fmt.Errorf("write: %w", op(syscall.EPIPE)), Reset},
		{errors.New("write: readfrom tcp 1->2: write tcp 1->2: write: broken pipe"), Reset}, // chain lost
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), EOF},
		{fmt.Errorf("read: %w", io.EOF), EOF},
		{fmt.Errorf("read: %w", os.ErrDeadlineExceeded), Timeout},
		{context.DeadlineExceeded, Timeout},
		{errors.New("http2: Transport received Server's graceful shutdown GOAWAY"), RefusedStream},
		{errors.New("stream error: stream ID 3; REFUSED_STREAM"), RefusedStream},
		{errors.New("stream error: stream ID 3; INTERNAL_ERROR"), StreamReset},
		{errors.New("tls: handshake failure"), TLSError},
		{errors.New(`read: malformed HTTP response "xyz"`), ProtocolError},
		{errors.New("something new"), Other},
	} {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%q) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestClassifyGRPC(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Outcome
	}{
		{status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\""), Refused},
		{status.Error(codes.Unavailable, "error reading from server: EOF"), EOF},
		{status.Error(codes.Unavailable, "the connection is draining"), Other},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), Timeout},
		{status.Error(codes.Unimplemented, "unknown service grpc.health.v1.Health"), NotServing},
	} {
		if got := classifyGRPC(tc.err); got != tc.want {
			t.Errorf("classifyGRPC(%q) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// Outcome names round-trip through text, as the JSON report writes them.
func TestOutcomeText(t *testing.T) {
	for o := range numOutcomes {
		b, _ := o.MarshalText()
		var back Outcome
		if err := back.UnmarshalText(b); err != nil || back != o {
			t.Errorf("outcome %d: %q read back as %d, %v", o, b, back, err)
		}
	}
}

// The dialer refuses a non-loopback address at the socket, whatever
// resolved it.
func TestLoopbackDialer(t *testing.T) {
	_, err := dialLoopback(t.Context(), "192.0.2.1:80")
	if err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Errorf("dial 192.0.2.1:80: %v, want a refusal naming loopback", err)
	}
}
