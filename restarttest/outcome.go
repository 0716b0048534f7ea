package restarttest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Outcome is how a request ended.
type Outcome uint8

// The outcomes. Every one but OK is a failure.
const (
	OK Outcome = iota
	// Refused: the connection was refused (nothing listened).
	Refused
	// Reset: the connection was reset (ECONNRESET, or EPIPE on a write).
	Reset
	// EOF: the server closed the connection before the whole answer.
	EOF
	// Timeout: no answer within Config.RequestTimeout.
	Timeout
	// Non2xx: an answer with a status outside 200–299.
	Non2xx
	// WrongBody: a POST's answer did not echo its body.
	WrongBody
	// RefusedStream: HTTP/2 (or gRPC) stream that the server refused
	// unprocessed, by a GOAWAY whose last stream id is lower, or
	// REFUSED_STREAM. A client may send it again safely; this one does not.
	RefusedStream
	// StreamReset: an HTTP/2 stream reset with another error code.
	StreamReset
	// TLSError: the TLS handshake failed.
	TLSError
	// ProtocolError: an answer the client could not parse, or not in the
	// protocol asked for (HTTP/1 to an HTTP/2 client).
	ProtocolError
	// NotServing: a gRPC health check answered other than SERVING, or an
	// RPC ended with a status other than OK that no other outcome covers.
	NotServing
	// Other: any other error; the examples say what.
	Other
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "refused", "reset", "eof", "timeout", "non-2xx", "wrong-body", "refused-stream", "stream-reset", "tls", "protocol", "not-serving", "other"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "outcome(" + string(rune('0'+o)) + ")"
}

// MarshalText writes the outcome's name.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// UnmarshalText reads an outcome's name.
func (o *Outcome) UnmarshalText(b []byte) error {
	for i, n := range outcomeNames {
		if n == string(b) {
			*o = Outcome(i)
			return nil
		}
	}
	return errors.New("unknown outcome " + string(b))
}

// classify names the failure of a request that got no answer.
func classify(err error) Outcome {
	var ne net.Error
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	msg := err.Error()
	switch {
	// Some layers (net/http's body writer) lose the error chain: the
	// messages are the fallback.
	case errors.Is(err, syscall.ECONNREFUSED), strings.Contains(msg, "connection refused"):
		return Refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"):
		return Reset
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return Timeout
	case strings.Contains(msg, "graceful shutdown GOAWAY"), strings.Contains(msg, "REFUSED_STREAM"):
		return RefusedStream
	case strings.Contains(msg, "stream error"), strings.Contains(msg, "RST_STREAM"):
		return StreamReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		strings.Contains(msg, "server sent GOAWAY and closed the connection"),
		strings.Contains(msg, "client connection lost"), strings.Contains(msg, "connection closed"):
		return EOF
	case errors.As(err, &recErr), errors.As(err, &alert), errors.As(err, &certErr),
		errors.As(err, &unknownAuth), errors.As(err, &hostErr), strings.Contains(msg, "tls: "):
		return TLSError
	case strings.Contains(msg, "malformed HTTP"), strings.Contains(msg, "http2: "), strings.Contains(msg, "protocol error"):
		return ProtocolError
	}
	return Other
}

// classifyGRPC names the failure of an RPC from its status.
func classifyGRPC(err error) Outcome {
	st, ok := status.FromError(err)
	if !ok {
		return classify(err)
	}
	msg := st.Message()
	switch st.Code() {
	case codes.DeadlineExceeded:
		return Timeout
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.Canceled:
		switch {
		case strings.Contains(msg, "connection refused"):
			return Refused
		case strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"):
			return Reset
		case strings.Contains(msg, "REFUSED_STREAM"), strings.Contains(msg, "GOAWAY"):
			return RefusedStream
		case strings.Contains(msg, "RST_STREAM"), strings.Contains(msg, "stream terminated"):
			return StreamReset
		case strings.Contains(msg, "EOF"), strings.Contains(msg, "closing"), strings.Contains(msg, "connection closed"):
			return EOF
		case strings.Contains(msg, "tls:"), strings.Contains(msg, "x509:"), strings.Contains(msg, "authentication handshake failed"):
			return TLSError
		case strings.Contains(msg, "timeout"), strings.Contains(msg, "deadline"):
			return Timeout
		}
		if st.Code() == codes.Unavailable {
			return Other
		}
	}
	return NotServing
}
