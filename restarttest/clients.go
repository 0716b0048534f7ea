package restarttest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// kind is what a request asks for.
type kind uint8

const (
	kindGet  kind = iota // GET of the URL
	kindPost             // POST of a body to PostPath, echo checked
	kindSlow             // GET of SlowPath
	kindRPC              // gRPC health check
)

var kindPaths = [...]string{"GET", "POST", "GET slow", "Check"}

// answer is what a transport got back. err is set when no answer came.
type answer struct {
	status int
	gen    string
	body   []byte
	err    error
	// outcome, when not OK, is the transport's own verdict on an answer
	// (a gRPC status, a protocol mismatch); detail says why.
	outcome Outcome
	detail  string
}

// transport sends one request at a time and owns its connections.
type transport interface {
	round(k kind, body []byte) answer
	close()
}

// client is one load loop.
type client struct {
	id   int
	mode Mode
	slow bool
	tr   transport
	rng  *rand.Rand
	// lastOK is the start (since t0, in ns) of the latest request answered
	// OK; -1 before the first.
	lastOK atomic.Int64
}

// loop sends requests until stop is closed. A request in flight then
// completes (within RequestTimeout) and is counted.
func (c *client) loop(s *settings, rec *recorder, stop <-chan struct{}) {
	defer c.tr.close()
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := kindGet
		var body []byte
		switch {
		case c.mode == GRPC:
			k = kindRPC
		case c.slow:
			k = kindSlow
		case s.PostPath != "" && c.rng.Float64() < s.PostShare:
			k = kindPost
			body = make([]byte, 1+c.rng.IntN(8192))
			for i := range body {
				body[i] = byte(c.rng.Uint32())
			}
		}
		start := time.Since(rec.t0)
		a := c.tr.round(k, body)
		end := time.Since(rec.t0)
		o, detail := judge(a, body)
		if o == OK {
			c.lastOK.Store(int64(start))
		}
		rec.add(Request{Client: c.id, Mode: c.mode, kind: k, Start: start, End: end, Outcome: o, Status: a.status, Gen: a.gen}, detail)
	}
}

// judge gives a request's outcome, and for a failure, what happened.
func judge(a answer, sent []byte) (Outcome, string) {
	switch {
	case a.err != nil:
		o := a.outcome
		if o == OK {
			o = classify(a.err)
		}
		return o, a.err.Error()
	case a.outcome != OK:
		return a.outcome, a.detail
	case a.status < 200 || a.status > 299:
		return Non2xx, fmt.Sprintf("status %d: %.80q", a.status, a.body)
	case sent != nil && !bytes.Equal(a.body, sent):
		return WrongBody, fmt.Sprintf("%d bytes back, %d sent", len(a.body), len(sent))
	}
	return OK, ""
}

// newRequest builds the HTTP request of kind k.
// readAnswer reads and closes resp's body: the answer's status, body and
// generation header.
func (s *settings) readAnswer(resp *http.Response) answer {
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return answer{err: fmt.Errorf("read body: %w", err)}
	}
	a := answer{status: resp.StatusCode, body: b}
	if s.GenHeader != "" {
		a.gen = resp.Header.Get(s.GenHeader)
	}
	return a
}

func (s *settings) newRequest(k kind, body []byte) *http.Request {
	var req *http.Request
	switch k {
	case kindPost:
		req, _ = http.NewRequest("POST", s.postURL, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/octet-stream")
	case kindSlow:
		req, _ = http.NewRequest("GET", s.slowURL, nil)
	default:
		req, _ = http.NewRequest("GET", s.target.String(), nil)
	}
	req.Header.Set("User-Agent", "handoff-check")
	return req
}

// h1 is an HTTP/1.1 client on a connection it owns: it writes each request
// itself and reads the answer, so nothing is retried behind its back.
type h1 struct {
	s       *settings
	tlsConf *tls.Config // nil for http
	newConn bool        // a new connection per request
	c       net.Conn
	r       *bufio.Reader
}

func newH1(s *settings, newConn bool) (*h1, error) {
	t := &h1{s: s, newConn: newConn}
	if s.target.Scheme == "https" {
		var err error
		if t.tlsConf, err = s.tlsConfig("http/1.1"); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *h1) dial(deadline time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := dialLoopback(ctx, t.s.hostport)
	if err != nil {
		return err
	}
	if t.tlsConf != nil {
		tc := tls.Client(c, t.tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return err
		}
		c = tc
	}
	t.c, t.r = c, bufio.NewReader(c)
	return nil
}

func (t *h1) round(k kind, body []byte) answer {
	deadline := time.Now().Add(t.s.RequestTimeout)
	if t.c == nil {
		if err := t.dial(deadline); err != nil {
			return answer{err: fmt.Errorf("connect: %w", err)}
		}
	}
	req := t.s.newRequest(k, body)
	req.Close = t.newConn
	t.c.SetDeadline(deadline)
	a := t.exchange(req)
	if a.err != nil || t.newConn {
		t.close()
	}
	return a
}

// exchange writes req and reads the whole answer; it closes the
// connection when the answer says Connection: close.
func (t *h1) exchange(req *http.Request) answer {
	if err := req.Write(t.c); err != nil {
		return answer{err: fmt.Errorf("write: %w", err)}
	}
	resp, err := http.ReadResponse(t.r, req)
	if err != nil {
		return answer{err: fmt.Errorf("read: %w", err)}
	}
	a := t.s.readAnswer(resp)
	if a.err != nil {
		return a
	}
	if resp.Close {
		t.close()
	}
	return a
}

func (t *h1) close() {
	if t.c != nil {
		t.c.Close()
		t.c, t.r = nil, nil
	}
}

// h2conn is one HTTP/2 connection that several h2 clients share, made
// with net/http's Transport.NewClientConn: no pool and no retry. When the
// server's GOAWAY makes it unusable, the next request opens another; a
// stream the GOAWAY refused fails as RefusedStream.
type h2conn struct {
	s      *settings
	tr     *http.Transport
	scheme string

	mu    sync.Mutex
	cc    *http.ClientConn
	old   []*http.ClientConn // closed by the last user
	users int
}

func newH2Conn(s *settings, tls bool) (*h2conn, error) {
	var p http.Protocols
	tr := &http.Transport{Protocols: &p, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return dialLoopback(ctx, addr)
	}, DisableCompression: true, TLSHandshakeTimeout: s.RequestTimeout}
	scheme := "http"
	if tls {
		p.SetHTTP2(true)
		conf, err := s.tlsConfig("h2")
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = conf
		scheme = "https"
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	return &h2conn{s: s, tr: tr, scheme: scheme}, nil
}

// get returns a connection with a stream reserved for the caller.
func (h *h2conn) get(deadline time.Time) (*http.ClientConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cc != nil && h.cc.Reserve() == nil {
		return h.cc, nil
	}
	if h.cc != nil {
		// Unusable (GOAWAY or closed): streams on it may still be running.
		h.old = append(h.old, h.cc)
		h.cc = nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cc, err := h.tr.NewClientConn(ctx, h.scheme, h.s.hostport)
	if err != nil {
		return nil, err
	}
	if err := cc.Reserve(); err != nil {
		cc.Close()
		return nil, err
	}
	h.cc = cc
	return cc, nil
}

func (h *h2conn) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.users--
	if h.users > 0 {
		return
	}
	for _, cc := range h.old {
		cc.Close()
	}
	if h.cc != nil {
		h.cc.Close()
	}
	h.tr.CloseIdleConnections()
}

// h2 is one client's use of a shared h2conn.
type h2 struct {
	s    *settings
	conn *h2conn
}

func (t *h2) round(k kind, body []byte) answer {
	deadline := time.Now().Add(t.s.RequestTimeout)
	cc, err := t.conn.get(deadline)
	if err != nil {
		return answer{err: fmt.Errorf("connect: %w", err)}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	req := t.s.newRequest(k, body).WithContext(ctx)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return answer{err: err}
	}
	a := t.s.readAnswer(resp)
	if a.err != nil {
		return a
	}
	if resp.ProtoMajor != 2 {
		a.outcome, a.detail = ProtocolError, "answered with "+resp.Proto+", not HTTP/2"
	}
	return a
}

func (t *h2) close() { t.conn.release() }

// newTransport makes the transport of one client. h2 clients of the same
// mode share a connection, H2Streams of them each.
func (s *settings) newTransport(mode Mode, shared map[Mode]*h2conn, rec *recorder) (transport, error) {
	switch mode {
	case KeepAlive, NewConn:
		return newH1(s, mode == NewConn)
	case H2C, H2:
		h := shared[mode]
		if h == nil || h.users >= s.H2Streams {
			var err error
			if h, err = newH2Conn(s, mode == H2); err != nil {
				return nil, err
			}
			shared[mode] = h
		}
		h.users++
		return &h2{s: s, conn: h}, nil
	case GRPC:
		return newGRPC(s, rec)
	}
	return nil, errors.New("unknown mode " + string(mode))
}
