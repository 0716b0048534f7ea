package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2Streams is how many streams a raw HTTP/2 client keeps open on a
// connection.
const rawH2Streams = 10

// Outcomes of a raw HTTP/2 stream that got no answer, as tally failure
// kinds.
const (
	// streamRefused: above the last stream id of a GOAWAY, or reset with
	// REFUSED_STREAM. The server never processed it: RFC 9113 lets a
	// client retry it, but one that retries nothing loses it.
	streamRefused = "stream refused"
	// streamLost: at or below the last stream id of every GOAWAY (or with
	// none), and the connection ended without an answer.
	streamLost = "stream lost"
)

// rawH2Client sends GET / and POST /echo over HTTP/2 connections it drives
// frame by frame with x/net's Framer and hpack, not the Transport, which
// retries refused streams. It keeps up to rawH2Streams streams open on its
// connection; on GOAWAY it opens a new connection for new streams while
// the old one finishes the streams it has. Every stream ends as a success
// or as one failure in t (streamRefused, streamLost, or another kind).
func rawH2Client(ctx context.Context, kind, addr string, tc *tls.Config, t *tally, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 5))
	var conns sync.WaitGroup
	defer conns.Wait()
	loop(ctx, 10_000, 5*time.Minute, func() {
		c, err := dialRawH2(kind, addr, tc, t)
		if err != nil {
			t.fail(kind, "dial "+testkit.ErrorKind(err), err)
			time.Sleep(10 * time.Millisecond) // pace: the failure is counted; dial again soon
			return
		}
		conns.Add(1)
		go func() { // ends when the connection closes
			defer conns.Done()
			c.readLoop()
		}()
		c.openStreams(ctx, rng)
	})
}

// rawH2Conn is one connection of a rawH2Client.
type rawH2Conn struct {
	kind, addr, scheme string
	t                  *tally
	c                  net.Conn

	wmu  sync.Mutex // guards writes: fr's write side, enc and hbuf
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer

	slots chan struct{} // one per open stream
	gone  chan struct{} // closed once no new stream may be opened

	mu        sync.Mutex
	streams   map[uint32]*rawH2Stream
	nextID    uint32
	goneAway  bool   // GOAWAY came, or the client is done with the connection
	lastID    uint32 // lowest last stream id of the GOAWAYs; meaningful once goneAway
	sawGoAway bool   // a GOAWAY came from the server
}

type rawH2Stream struct {
	want   []byte // the body POST /echo must return; nil for GET /
	status string
	gen    string
	body   []byte
}

func dialRawH2(kind, addr string, tc *tls.Config, t *tally) (*rawH2Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, requestTimeout)
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if tc != nil {
		scheme = "https"
		conn := tls.Client(nc, tc)
		conn.SetDeadline(time.Now().Add(requestTimeout))
		if err := conn.Handshake(); err != nil {
			nc.Close()
			return nil, err
		}
		conn.SetDeadline(time.Time{})
		if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
			nc.Close()
			return nil, fmt.Errorf("ALPN negotiated %q, want h2", p)
		}
		nc = conn
	}
	c := &rawH2Conn{
		kind: kind, addr: addr, scheme: scheme, t: t, c: nc,
		fr:      http2.NewFramer(nc, nc),
		slots:   make(chan struct{}, rawH2Streams),
		gone:    make(chan struct{}),
		streams: map[uint32]*rawH2Stream{},
		nextID:  1,
	}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	nc.SetWriteDeadline(time.Now().Add(requestTimeout))
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		nc.Close()
		return nil, err
	}
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0}); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// openStreams keeps rawH2Streams streams open until the connection goes
// away or ctx ends; then it lets the open streams finish.
func (c *rawH2Conn) openStreams(ctx context.Context, rng *rand.Rand) {
	for {
		select {
		case c.slots <- struct{}{}:
		case <-c.gone:
			return
		case <-ctx.Done():
			c.leave()
			return
		}
		if !c.open(rng) {
			return
		}
	}
}

// leave opens no more streams, and closes the connection once its streams
// are done.
func (c *rawH2Conn) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goAwayLocked(1<<31 - 1)
	if len(c.streams) == 0 {
		c.c.Close()
	}
}

func (c *rawH2Conn) goAwayLocked(last uint32) {
	if !c.goneAway {
		c.goneAway = true
		c.lastID = last
		close(c.gone)
	}
	c.lastID = min(c.lastID, last)
}

// open sends one request on a new stream. It reports false when the
// connection takes no new stream.
func (c *rawH2Conn) open(rng *rand.Rand) bool {
	s := &rawH2Stream{}
	if rng.IntN(10) < 3 {
		s.want = []byte(strconv.FormatUint(rng.Uint64(), 36))
	}
	// Deciding to open the stream and sending its HEADERS under wmu keeps
	// them in order with the ACK of a PING that follows a GOAWAY: a
	// stream is opened only if it goes out before the ACK.
	c.wmu.Lock()
	c.mu.Lock()
	if c.goneAway {
		c.mu.Unlock()
		c.wmu.Unlock()
		<-c.slots
		return false
	}
	id := c.nextID
	c.nextID += 2
	c.streams[id] = s
	c.mu.Unlock()

	c.hbuf.Reset()
	method, path := "GET", "/"
	if s.want != nil {
		method, path = "POST", "/echo"
	}
	for _, f := range [][2]string{{":method", method}, {":scheme", c.scheme}, {":authority", c.addr}, {":path", path}} {
		c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if s.want != nil {
		c.enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "text/plain"})
		c.enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(s.want))})
	}
	c.c.SetWriteDeadline(time.Now().Add(requestTimeout))
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: s.want == nil, EndHeaders: true})
	if err == nil && s.want != nil {
		err = c.fr.WriteData(id, true, s.want)
	}
	c.wmu.Unlock()
	if err != nil {
		c.finish(id, "write "+testkit.ErrorKind(err), err)
		return false
	}
	return true
}

// finish ends stream id: a success when what is empty, else a failure of
// that kind.
func (c *rawH2Conn) finish(id uint32, what string, detail error) {
	c.mu.Lock()
	s, ok := c.streams[id]
	delete(c.streams, id)
	closeNow := c.goneAway && len(c.streams) == 0
	c.mu.Unlock()
	if !ok {
		return
	}
	<-c.slots
	if what == "" {
		c.t.success(c.kind, s.gen)
	} else {
		c.t.failOn(c.kind, what, fmt.Errorf("stream %d: %w", id, detail), c.c)
	}
	if closeNow {
		c.c.Close() // the reader ends
	}
}

// readLoop reads the server's frames until the connection ends, and ends
// every stream still open then: refused above the last stream id of a
// GOAWAY, else lost.
func (c *rawH2Conn) readLoop() {
	defer c.c.Close()
	for {
		c.c.SetReadDeadline(time.Now().Add(requestTimeout))
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.mu.Lock()
			c.goAwayLocked(1<<31 - 1)
			open := make(map[uint32]bool, len(c.streams))
			for id := range c.streams {
				open[id] = c.sawGoAway && id > c.lastID
			}
			c.mu.Unlock()
			for id, refused := range open {
				if refused {
					c.finish(id, streamRefused, err)
				} else {
					c.finish(id, streamLost, err)
				}
			}
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func() error { return c.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.write(func() error { return c.fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			c.headers(f)
		case *http2.DataFrame:
			c.data(f)
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				c.finish(f.StreamID, streamRefused, errors.New("RST_STREAM REFUSED_STREAM"))
			} else {
				c.finish(f.StreamID, "reset "+f.ErrCode.String(), errors.New("RST_STREAM"))
			}
		case *http2.GoAwayFrame:
			c.mu.Lock()
			c.sawGoAway = true
			c.goAwayLocked(f.LastStreamID)
			var refused []uint32
			for id := range c.streams {
				if id > c.lastID {
					refused = append(refused, id)
				}
			}
			idle := len(c.streams) == len(refused)
			c.mu.Unlock()
			for _, id := range refused {
				c.finish(id, streamRefused, fmt.Errorf("GOAWAY with last stream %d", f.LastStreamID))
			}
			if idle {
				return // no stream left to wait for
			}
		}
	}
}

func (c *rawH2Conn) write(f func() error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.c.SetWriteDeadline(time.Now().Add(requestTimeout))
	f() // a failed write fails the read too
}

func (c *rawH2Conn) stream(id uint32) *rawH2Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *rawH2Conn) headers(f *http2.MetaHeadersFrame) {
	s := c.stream(f.StreamID)
	if s == nil {
		return
	}
	if st := f.PseudoValue("status"); st != "" && s.status == "" {
		s.status = st
		for _, hf := range f.RegularFields() {
			if hf.Name == "x-generation" {
				s.gen = hf.Value
			}
		}
	}
	if f.StreamEnded() {
		c.done(f.StreamID, s)
	}
}

func (c *rawH2Conn) data(f *http2.DataFrame) {
	if n := len(f.Data()); n > 0 {
		c.write(func() error { return c.fr.WriteWindowUpdate(0, uint32(n)) })
	}
	s := c.stream(f.StreamID)
	if s == nil {
		return
	}
	s.body = append(s.body, f.Data()...)
	if f.StreamEnded() {
		c.done(f.StreamID, s)
	}
}

// done judges a stream the server answered in full.
func (c *rawH2Conn) done(id uint32, s *rawH2Stream) {
	switch {
	case s.status != "200":
		c.finish(id, "status "+s.status, errors.New(string(s.body)))
	case s.want != nil && !bytes.Equal(s.body, s.want):
		c.finish(id, "wrong echo", fmt.Errorf("got %q, want %q", s.body, s.want))
	default:
		c.finish(id, "", nil)
	}
}

// rawH2Upgrades is how many times the HTTP/2 test upgrades under load.
const rawH2Upgrades = 20

// HTTP/2 clients that retry nothing lose no stream across restarts: the
// drain's two-step GOAWAY serves every stream a client sent before it
// read the first GOAWAY. With net/http's single GOAWAY (a build with the
// handoff_h2onestep tag: E2E_BUILD_TAGS=handoff_h2onestep) streams are
// refused.
func TestHTTP2NoStreamRefusedAcrossRestarts(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		kind := map[bool]string{false: "h2c-raw", true: "h2-tls-raw"}[useTLS]
		t.Run(kind, func(t *testing.T) {
			dir := testkit.ShortTempDir(t)
			args := []string{"-log-level", "info"}
			var tc *tls.Config
			if useTLS {
				cert := writeCert(t, dir, 1)
				pool := x509.NewCertPool()
				pool.AddCert(cert)
				tc = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}}
				args = append(args, "-tls-cert", "cert.pem", "-tls-key", "key.pem")
			}
			s := start(t, startOptions{dir: dir, args: args})
			pid := s.waitReady(1)

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			tl := newTally()
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rawH2Client(ctx, kind, s.addr, tc, tl, uint64(i))
				}()
			}
			served := func(what string) {
				base := tl.okCount(kind)
				testkit.WaitFor(t, time.Minute, what, func() error {
					if tl.okCount(kind) <= base {
						return fmt.Errorf("no %s stream answered yet", kind)
					}
					return nil
				})
			}
			served("streams answered before the upgrades")
			for g := 2; g <= rawH2Upgrades+1; g++ {
				pid = s.upgrade(pid, g)
			}
			served("streams answered by the last generation")
			cancel()
			wg.Wait()

			var twoStep, between, http2Closed int
			for _, d := range s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "drain finished" && l.Str("reason") == "handoff" }) {
				twoStep += d.Int("http2_two_step")
				between += d.Int("streams_between_goaways")
				http2Closed += d.Int("closed_http2")
			}
			t.Logf("after %d upgrades:\n%s", rawH2Upgrades, tl)
			t.Logf("drains: %d HTTP/2 connections closed, %d by the two-step GOAWAY, %d streams served between the GOAWAYs",
				http2Closed, twoStep, between)
			for _, e := range tl.examples {
				t.Log("failure:", e)
			}
			tl.mu.Lock()
			refused, lost := tl.failed[kind][streamRefused], tl.failed[kind][streamLost]
			tl.mu.Unlock()
			if refused != 0 || lost != 0 {
				t.Errorf("%d streams refused and %d lost across %d upgrades, want 0 and 0", refused, lost, rawH2Upgrades)
			}
			if n := tl.failures(); n > refused+lost {
				t.Errorf("%d streams failed otherwise, want 0", n-refused-lost)
			}
			if len(tl.gens) != rawH2Upgrades+1 {
				t.Errorf("%d generations answered, want %d (the upgrades plus one)", len(tl.gens), rawH2Upgrades+1)
			}
			if twoStep == 0 {
				t.Errorf("no drain closed an HTTP/2 connection with the two-step GOAWAY")
			}
		})
	}
}
