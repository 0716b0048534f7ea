package upgrade

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// The two-step close of an HTTP/2 connection (RFC 9113 §6.8).
//
// net/http ends an HTTP/2 connection with one GOAWAY that names the last
// stream it has read. A stream the client sent at the same moment is above
// that id: refused unprocessed, and lost with a client that does not retry.
// The two-step close first sends GOAWAY with the last stream id 2^31-1 and
// a PING. A client stops opening streams when it reads the GOAWAY, and it
// answers the PING after it, so once the PING's ACK arrives every stream it
// opened before has arrived too, and is served. (x/net's server reads a
// frame only once it has processed the one before, so those streams are
// already counted in the last stream id it will name.) Only then (or after
// Options.GoAwayAckTimeout) does the drain call http.Server.Shutdown, whose
// GOAWAY now names a stream id that no stream in flight is above.
//
// net/http's HTTP/2 server has no hook for this. So the HTTP server hands
// every HTTP/2 connection, TLS ("h2") and h2c alike, to an http2.Server of
// golang.org/x/net through its own TLSNextProto functions, on an h2Conn:
// a net.Conn that follows the frames both ways as they pass and adds the
// first step's two frames between two frames of the server, under the lock
// that orders all writes (the server's writes go through a 4 KB buffer
// whose flushes may end mid-frame, from more than one goroutine). The
// server never learns of them: GOAWAY and PING carry no header block (HPACK
// state is untouched), they go only before any GOAWAY of the server's (a
// GOAWAY may not raise the last stream id of an earlier one), and the
// server ignores a PING ACK whose data it did not send (processPing in
// x/net's server.go).

// h2Conn is an HTTP/2 server connection that can add the first step of the
// two-step close to what the server writes, and watches what the client
// sends for the PING's acknowledgement.
type h2Conn struct {
	net.Conn
	orig    net.Conn        // the connection net/http handed over, for ConnState hooks
	changed chan<- struct{} // the tracker's: told when the PING is acknowledged
	ping    [8]byte         // the PING's data

	want atomic.Bool // the drain asked for the two-step close

	wmu  sync.Mutex // orders writes; guards out and done
	out  frameScanner
	done bool // the first step went out, or will not (the server sent GOAWAY first)

	in        frameScanner // only the reading goroutine uses it
	maxStream uint32       // highest stream the client opened; reader only

	mu      sync.Mutex // guards the two-step's progress, below
	askedAt time.Time  // when the drain asked
	sent    bool       // our GOAWAY and PING went out
	acked   bool       // the client acknowledged the PING
	final   bool       // the server's own GOAWAY went out after ours
	skipped bool       // the server sent a GOAWAY before ours could go
	opened  []uint32   // streams the client opened after our GOAWAY, until the final one
	between int64      // of those, the ones at or below the final GOAWAY's last stream id
}

// maxOpenedRecorded bounds h2Conn.opened. A client stops opening streams
// when it reads the first GOAWAY, so only those already on their way are
// recorded; a client that goes on regardless is counted no further.
const maxOpenedRecorded = 1 << 12

// clientPreface is what an HTTP/2 client sends before its first frame.
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// newH2Conn wraps c, which net/http handed over as orig. For h2c net/http
// has already read the client preface; over TLS it is still to come.
func newH2Conn(c, orig net.Conn, prefaceRead bool, changed chan<- struct{}) *h2Conn {
	w := &h2Conn{Conn: c, orig: orig, changed: changed}
	_, _ = rand.Read(w.ping[:]) // it does not fail (crypto/rand, Go 1.24+)
	if !prefaceRead {
		w.in.skip = len(clientPreface)
	}
	return w
}

// h2TLSConn is an h2Conn over TLS: its ConnectionState is how the HTTP/2
// server learns that the connection is TLS (and fills Request.TLS).
type h2TLSConn struct {
	*h2Conn
	tc *tls.Conn
}

func (c h2TLSConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

// origConn is the connection net/http handed over, which ConnState hooks
// are given in place of the wrapper, as net/http's own HTTP/2 server does.
func (c *h2Conn) origConn() net.Conn { return c.orig }

// goAway starts the two-step close: the first step goes out at once if the
// server is between frames, or else at the end of the frame it is writing.
// It does not block.
func (c *h2Conn) goAway() {
	if c.ask() {
		// Ends once the frames are written, or the write fails (a
		// force-close at the drain deadline ends it), or at once when the
		// server is mid-frame: its next Write adds them.
		go c.flush()
	}
}

// ask records that the drain wants the two-step close, and reports whether
// it had not been asked before.
func (c *h2Conn) ask() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.askedAt.IsZero() {
		return false
	}
	c.askedAt = time.Now()
	c.want.Store(true)
	return true
}

// flush writes the first step if the server is between frames.
func (c *h2Conn) flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.canInject(&c.out) {
		_ = c.inject() // a failed write fails the server's next one too
	}
}

// canInject reports whether frames may be added at the point s has reached
// in the server's output: between two frames, not inside a header block
// (HEADERS or PUSH_PROMISE and their CONTINUATION frames), after the
// server's SETTINGS, and before any GOAWAY of the server's. Callers hold wmu.
func (c *h2Conn) canInject(s *frameScanner) bool {
	return !c.done && s.atBoundary() && !s.inBlock && s.frames > 0 && s.goAways == 0
}

// inject writes the first step. The caller holds wmu and has checked
// canInject.
func (c *h2Conn) inject() error {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	_ = fr.WriteGoAway(1<<31-1, http2.ErrCodeNo, nil) // writes to a bytes.Buffer do not fail
	_ = fr.WritePing(false, c.ping)
	c.done = true
	// Marked sent before the write: the client may answer (open a stream,
	// acknowledge the PING) before Write returns here, and the reader must
	// count what comes from then on. The scanner does not see these
	// frames: it follows the server's.
	c.mu.Lock()
	c.sent = true
	c.mu.Unlock()
	_, err := c.Conn.Write(b.Bytes())
	return err
}

// Write passes the server's bytes on. When the first step is due, it goes
// between p's frames, at the first point where frames may be added.
func (c *h2Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.done || !c.want.Load() {
		return c.write(p)
	}
	at := 0
	if !c.canInject(&c.out) {
		probe := c.out // find the point without changing the state
		at = probe.scan(p, func(ev frameEvent) bool {
			return ev != frameEnd || !c.canInject(&probe)
		})
	}
	n, err := c.write(p[:at])
	if err != nil {
		return n, err
	}
	if c.canInject(&c.out) {
		if err := c.inject(); err != nil {
			return n, err
		}
	}
	m, err := c.write(p[at:])
	return n + m, err
}

// write writes b and follows the frames in what was written. Callers hold wmu.
func (c *h2Conn) write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := c.Conn.Write(b)
	c.out.scan(b[:n], c.wrote)
	return n, err
}

// wrote sees the frames the server wrote: its own GOAWAY is the final one
// of the two-step close, or, before ours went out, ends the two-step close
// before it began.
func (c *h2Conn) wrote(ev frameEvent) bool {
	if ev != frameEnd || c.out.typ != http2.FrameGoAway {
		return true
	}
	if !c.done {
		c.done = true
		c.mu.Lock()
		c.skipped = true
		c.mu.Unlock()
		return true
	}
	last := c.out.lastStreamID()
	c.mu.Lock()
	if c.sent && !c.final {
		c.final = true
		for _, id := range c.opened {
			if id <= last {
				c.between++
			}
		}
		c.opened = nil
	}
	c.mu.Unlock()
	return true
}

// Read passes the client's bytes on and follows its frames: the streams it
// opens, and the acknowledgement of our PING.
func (c *h2Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.scan(p[:n], c.read)
	return n, err
}

func (c *h2Conn) read(ev frameEvent) bool {
	s := &c.in
	switch {
	case ev == frameHeader && s.typ == http2.FrameHeaders && s.stream > c.maxStream:
		c.maxStream = s.stream // a new stream (a HEADERS frame of an open one carries trailers)
		if c.want.Load() {
			c.mu.Lock()
			if c.sent && !c.final && len(c.opened) < maxOpenedRecorded {
				c.opened = append(c.opened, s.stream)
			}
			c.mu.Unlock()
		}
	case ev == frameEnd && s.typ == http2.FramePing && s.flags&byte(http2.FlagPingAck) != 0 &&
		s.length == 8 && bytes.Equal(s.keep[:s.nkeep], c.ping[:]):
		c.mu.Lock()
		c.acked = true
		c.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
	return true
}

// awaitingAck reports whether the drain should still hold back the final
// GOAWAY for c: it asked for the two-step close less than wait ago, and
// the PING is not yet acknowledged.
func (c *h2Conn) awaitingAck(now time.Time, wait time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.askedAt.IsZero() && !c.acked && !c.final && !c.skipped && now.Before(c.askedAt.Add(wait))
}

// twoStep reports whether c was ended by the two-step close (its first
// GOAWAY went out), and how many streams the client opened between the
// two GOAWAYs that the server served. A client that leaves after the
// first GOAWAY, before the final one, had all its streams served.
func (c *h2Conn) twoStep() (ended bool, between int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.sent {
		return false, 0
	}
	if !c.final {
		return true, int64(len(c.opened))
	}
	return true, c.between
}

// frameEvent is what frameScanner.scan reports.
type frameEvent int

const (
	frameHeader frameEvent = iota // a frame header is complete: typ, flags, stream and length are set
	frameEnd                      // a frame is complete: keep holds its first payload bytes
)

// frameHeaderLen is the size of an HTTP/2 frame header.
const frameHeaderLen = 9

// frameScanner follows one direction of an HTTP/2 connection as its bytes
// pass, in pieces of any size, without holding them: it knows where each
// frame begins and ends, whether a header block is open, and the first
// bytes of the current frame's payload.
type frameScanner struct {
	skip  int // bytes to pass before the first frame (a preface)
	hdr   [frameHeaderLen]byte
	nhdr  int // bytes of hdr filled; frameHeaderLen once it is complete
	left  int // payload bytes of the current frame still to come
	keep  [8]byte
	nkeep int

	typ     http2.FrameType
	flags   byte
	stream  uint32
	length  int
	inBlock bool // a header block is open: only CONTINUATION may follow
	frames  int  // frames complete
	goAways int  // GOAWAY frames begun
}

// atBoundary reports whether the bytes so far end with a whole frame.
func (s *frameScanner) atBoundary() bool { return s.skip == 0 && s.nhdr == 0 }

// lastStreamID is the last stream id of the GOAWAY frame just complete.
func (s *frameScanner) lastStreamID() uint32 {
	if s.nkeep < 4 {
		return 0 // a malformed GOAWAY; the peer closes the connection
	}
	return binary.BigEndian.Uint32(s.keep[:4]) & (1<<31 - 1)
}

// scan follows p. At each event it calls on, and stops before the next
// byte if on returns false. It returns how many bytes of p it followed.
func (s *frameScanner) scan(p []byte, on func(frameEvent) bool) int {
	n := 0
	for {
		if s.nhdr == frameHeaderLen && s.left == 0 {
			s.nhdr = 0
			s.frames++
			if !on(frameEnd) {
				return n
			}
		}
		if n == len(p) {
			return n
		}
		switch {
		case s.skip > 0:
			k := min(s.skip, len(p)-n)
			s.skip -= k
			n += k
		case s.nhdr < frameHeaderLen:
			k := copy(s.hdr[s.nhdr:], p[n:])
			s.nhdr += k
			n += k
			if s.nhdr < frameHeaderLen {
				continue
			}
			s.length = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			s.typ = http2.FrameType(s.hdr[3])
			s.flags = s.hdr[4]
			s.stream = binary.BigEndian.Uint32(s.hdr[5:]) & (1<<31 - 1)
			s.left, s.nkeep = s.length, 0
			switch s.typ {
			case http2.FrameHeaders, http2.FramePushPromise, http2.FrameContinuation:
				s.inBlock = s.flags&byte(http2.FlagHeadersEndHeaders) == 0
			case http2.FrameGoAway:
				s.goAways++
			}
			if !on(frameHeader) {
				return n
			}
		default:
			k := min(s.left, len(p)-n)
			s.nkeep += copy(s.keep[s.nkeep:], p[n:n+k])
			s.left -= k
			n += k
		}
	}
}
