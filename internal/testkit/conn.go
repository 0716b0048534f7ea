package testkit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// DefaultTimeout bounds a dial, and each request on a Conn, of Dial.
const DefaultTimeout = 10 * time.Second

// Conn is an HTTP/1.1 client connection the test owns: it writes each
// request itself and reads the answer, so nothing is retried behind its
// back, and a connection the server closes shows as an error.
type Conn struct {
	net.Conn
	// Reader holds what the server sent and Do has not consumed: read the
	// connection through it (an EOF after the last answer, a stream).
	Reader *bufio.Reader

	timeout time.Duration
}

// DialTimeout connects to addr; timeout bounds the dial, and each request
// of Do.
func DialTimeout(addr string, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: c, Reader: bufio.NewReader(c), timeout: timeout}, nil
}

// Dial connects to addr within DefaultTimeout, or fails the test. The
// connection is closed when the test ends.
func Dial(t testing.TB, addr string) *Conn {
	t.Helper()
	c, err := DialTimeout(addr, DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Do writes req and reads the whole answer, within the connection's
// timeout. Its errors say which step failed, and wrap the cause.
func (c *Conn) Do(req *http.Request) (*http.Response, []byte, error) {
	c.SetDeadline(time.Now().Add(c.timeout))
	if err := req.Write(c); err != nil {
		return nil, nil, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(c.Reader, req)
	if err != nil {
		return nil, nil, fmt.Errorf("read: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("read body: %w", err)
	}
	return resp, body, nil
}

// Get sends GET path and reads the whole answer, as Do does.
func (c *Conn) Get(path string) (*http.Response, []byte, error) {
	req, err := http.NewRequest("GET", "http://"+c.RemoteAddr().String()+path, nil)
	if err != nil {
		return nil, nil, err
	}
	return c.Do(req)
}

// NewConnClient is an HTTP client that opens a new connection for every
// request (so each request goes to whoever accepts it now) and gives up
// on a request after 5 seconds.
func NewConnClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// ErrorKind sorts a client's error into what load tests count: refused,
// reset, broken pipe, eof, timeout, or "other: " and the error.
func ErrorKind(err error) string {
	var te interface{ Timeout() bool }
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &te) && te.Timeout():
		return "timeout"
	}
	return "other: " + err.Error()
}

// MixedRequest is the keep-alive load's next request to the reference
// server at addr: three in ten a POST /echo of 1 to maxBody random bytes,
// which it returns to check the answer against, the rest a GET /.
func MixedRequest(rng *rand.Rand, addr string, maxBody int) (req *http.Request, want []byte) {
	if rng.IntN(10) < 3 {
		want = make([]byte, 1+rng.IntN(maxBody))
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		req, _ = http.NewRequest("POST", "http://"+addr+"/echo", bytes.NewReader(want))
		return req, want
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/", nil)
	return req, nil
}
