package upgrade

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http2"
)

// recConn records what is written to it and reads from a script of
// chunks, each returned by one Read.
type recConn struct {
	net.Conn // nil: methods the tests do not use panic
	mu       sync.Mutex
	out      bytes.Buffer
	in       [][]byte
}

func (c *recConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *recConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in[0])
	if c.in[0] = c.in[0][n:]; len(c.in[0]) == 0 {
		c.in = c.in[1:]
	}
	return n, nil
}

func (c *recConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

// frames builds HTTP/2 frames with a Framer.
func frames(t testing.TB, write func(fr *http2.Framer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := write(http2.NewFramer(&b, nil)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Server frames the tests write, each on its own.

func settingsFrame(t testing.TB) []byte {
	return frames(t, func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100})
	})
}

func headersFrame(t testing.TB, id uint32, endHeaders bool) []byte {
	return frames(t, func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x88, 1, 2, 3}, EndHeaders: endHeaders})
	})
}

func continuationFrame(t testing.TB, id uint32, endHeaders bool) []byte {
	return frames(t, func(fr *http2.Framer) error { return fr.WriteContinuation(id, endHeaders, []byte{4, 5, 6}) })
}

func dataFrame(t testing.TB, id uint32, n int) []byte {
	return frames(t, func(fr *http2.Framer) error { return fr.WriteData(id, false, bytes.Repeat([]byte{'d'}, n)) })
}

func emptyDataFrame(t testing.TB, id uint32) []byte {
	return frames(t, func(fr *http2.Framer) error { return fr.WriteData(id, true, nil) })
}

func goAwayFrame(t testing.TB, last uint32) []byte {
	return frames(t, func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
}

// summary lists the frames in b, one word each: "GOAWAY(2147483647)" for
// a GOAWAY, "PING" and "PING-ACK", else the frame type and its stream. A
// Framer reads them, so a frame added inside a header block fails it.
func summary(t *testing.T, b []byte) []string {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	var out []string
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("output is not a sequence of valid frames after %v: %v", out, err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			out = append(out, fmt.Sprintf("GOAWAY(%d)", f.LastStreamID))
		case *http2.PingFrame:
			if f.IsAck() {
				out = append(out, "PING-ACK")
			} else {
				out = append(out, "PING")
			}
		default:
			out = append(out, fmt.Sprintf("%s(%d)", f.Header().Type, f.Header().StreamID))
		}
	}
}

// withoutOurs returns out without the first step's frames, and the index
// where they were (-1 if absent).
func withoutOurs(out []string) ([]string, int) {
	i := slices.Index(out, "GOAWAY(2147483647)")
	if i < 0 || i+1 >= len(out) || out[i+1] != "PING" {
		return out, -1
	}
	return slices.Delete(slices.Clone(out), i, i+2), i
}

// The first step lands between the server's frames, wherever the drain
// asks and however the server's writes cut its frames.
func TestH2ConnAddsFramesOnFrameBoundaries(t *testing.T) {
	settings := settingsFrame(t)
	hdr := headersFrame(t, 1, true)
	hdrOpen := headersFrame(t, 3, false)
	cont := continuationFrame(t, 3, false)
	contEnd := continuationFrame(t, 3, true)
	data := dataFrame(t, 1, 100)
	empty := emptyDataFrame(t, 1)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name string
		// writes are the server's Write calls; the drain asks before
		// writes[askAt] (len(writes): after the last).
		writes [][]byte
		askAt  int
		want   []string // every frame out, ours included
	}{
		{
			name:   "idle between frames: at once",
			writes: [][]byte{settings, hdr},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "HEADERS(1)", "GOAWAY(2147483647)", "PING"},
		},
		{
			name:   "before the next write, which starts at a boundary",
			writes: [][]byte{settings, cat(hdr, data)},
			askAt:  1,
			want:   []string{"SETTINGS(0)", "GOAWAY(2147483647)", "PING", "HEADERS(1)", "DATA(1)"},
		},
		{
			name:   "frame split across writes: after its end",
			writes: [][]byte{settings, cat(hdr, data[:50]), cat(data[50:], empty)},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "HEADERS(1)", "DATA(1)", "GOAWAY(2147483647)", "PING", "DATA(1)"},
		},
		{
			name:   "frame header split across writes",
			writes: [][]byte{settings, data[:4], data[4:7], cat(data[7:], hdr)},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "DATA(1)", "GOAWAY(2147483647)", "PING", "HEADERS(1)"},
		},
		{
			name:   "several frames in one write: at the first boundary",
			writes: [][]byte{settings, data[:20], cat(data[20:], hdr, data, empty)},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "DATA(1)", "GOAWAY(2147483647)", "PING", "HEADERS(1)", "DATA(1)", "DATA(1)"},
		},
		{
			name:   "zero-length frame ends a write",
			writes: [][]byte{settings, cat(hdr, empty), data},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "HEADERS(1)", "DATA(1)", "GOAWAY(2147483647)", "PING", "DATA(1)"},
		},
		{
			name:   "header block: after its last CONTINUATION",
			writes: [][]byte{settings, hdrOpen, cont, cat(contEnd, data)},
			askAt:  1,
			want:   []string{"SETTINGS(0)", "GOAWAY(2147483647)", "PING", "HEADERS(3)", "CONTINUATION(3)", "CONTINUATION(3)", "DATA(1)"},
		},
		{
			name:   "header block under way: after its last CONTINUATION",
			writes: [][]byte{settings, hdrOpen, cont, cat(contEnd, data)},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "HEADERS(3)", "CONTINUATION(3)", "CONTINUATION(3)", "GOAWAY(2147483647)", "PING", "DATA(1)"},
		},
		{
			name:   "header block in one write with its CONTINUATION split",
			writes: [][]byte{settings, cat(hdrOpen, cont, contEnd[:5]), cat(contEnd[5:], data)},
			askAt:  1,
			want:   []string{"SETTINGS(0)", "GOAWAY(2147483647)", "PING", "HEADERS(3)", "CONTINUATION(3)", "CONTINUATION(3)", "DATA(1)"},
		},
		{
			name:   "header block open at the end: waits",
			writes: [][]byte{settings, hdrOpen, cont},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "HEADERS(3)", "CONTINUATION(3)"},
		},
		{
			name:   "not before the server's SETTINGS",
			writes: [][]byte{settings[:5], cat(settings[5:], hdr)},
			askAt:  0,
			want:   []string{"SETTINGS(0)", "GOAWAY(2147483647)", "PING", "HEADERS(1)"},
		},
		{
			name:   "before the server's GOAWAY in the same write",
			writes: [][]byte{settings, cat(data[:30]), cat(data[30:], goAwayFrame(t, 1))},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "DATA(1)", "GOAWAY(2147483647)", "PING", "GOAWAY(1)"},
		},
		{
			name:   "never after the server's GOAWAY",
			writes: [][]byte{settings, goAwayFrame(t, 1), data},
			askAt:  2,
			want:   []string{"SETTINGS(0)", "GOAWAY(1)", "DATA(1)"},
		},
		{
			name:   "never after a GOAWAY that is the server's first frame",
			writes: [][]byte{goAwayFrame(t, 0)[:10], goAwayFrame(t, 0)[10:], settings},
			askAt:  1,
			want:   []string{"GOAWAY(0)", "SETTINGS(0)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &recConn{}
			w := newH2Conn(rc, rc, true, make(chan struct{}, 1))
			var server []byte
			for i, b := range tt.writes {
				if i == tt.askAt {
					w.ask()
					w.flush()
				}
				if n, err := w.Write(b); n != len(b) || err != nil {
					t.Fatalf("Write %d: n = %d, err = %v; want %d, nil", i, n, err, len(b))
				}
				server = append(server, b...)
			}
			if tt.askAt == len(tt.writes) {
				w.ask()
				w.flush()
			}
			out := rc.written()
			if got := summary(t, out); !slices.Equal(got, tt.want) {
				t.Errorf("frames out = %v\nwant %v", got, tt.want)
			}
			// The server's bytes pass unchanged around ours.
			got, at := withoutOurs(summary(t, out))
			if at >= 0 {
				first := bytes.Index(out, frames(t, func(fr *http2.Framer) error { return fr.WriteGoAway(1<<31-1, http2.ErrCodeNo, nil) }))
				out = slices.Delete(out, first, first+34)
			}
			if !bytes.Equal(out, server) {
				t.Errorf("the server's bytes changed: %v", got)
			}
			if at < 0 {
				return
			}
			// Once out, never again.
			w.Write(data)
			w.ask()
			w.flush()
			if n := strings.Count(strings.Join(summary(t, rc.written()), " "), "GOAWAY(2147483647)"); n != 1 {
				t.Errorf("first GOAWAY sent %d times, want once", n)
			}
		})
	}
}

// The acknowledgement of our PING is recognised however the client's
// bytes are cut, and only with our data and the ACK flag.
func TestH2ConnSeesPingAckSplitAcrossReads(t *testing.T) {
	rc := &recConn{}
	w := newH2Conn(rc, rc, false, make(chan struct{}, 1))
	ours := w.ping
	other := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	client := func(ack bool, data [8]byte) []byte {
		return bytes.Join([][]byte{
			[]byte(clientPreface),
			frames(t, func(fr *http2.Framer) error { return fr.WriteSettings() }),
			headersFrame(t, 1, false), continuationFrame(t, 1, true),
			frames(t, func(fr *http2.Framer) error { return fr.WritePing(ack, data) }),
			dataFrame(t, 1, 10),
		}, nil)
	}
	tests := []struct {
		name  string
		bytes []byte
		acked bool
	}{
		{"our data, ACK", client(true, ours), true},
		{"other data, ACK", client(true, other), false},
		{"our data, no ACK flag", client(false, ours), false},
	}
	for _, tt := range tests {
		for _, size := range []int{1, 2, 3, 7, 9, 16, 17, 1000} {
			t.Run(fmt.Sprintf("%s/reads of %d bytes", tt.name, size), func(t *testing.T) {
				rc := &recConn{in: chunks(tt.bytes, size)}
				w := newH2Conn(rc, rc, false, make(chan struct{}, 1))
				w.ping = ours
				w.ask()
				got, err := io.ReadAll(w)
				if err != nil || !bytes.Equal(got, tt.bytes) {
					t.Fatalf("read %d bytes, %v; want the %d bytes sent", len(got), err, len(tt.bytes))
				}
				w.mu.Lock()
				acked := w.acked
				w.mu.Unlock()
				if acked != tt.acked {
					t.Errorf("acked = %v, want %v", acked, tt.acked)
				}
			})
		}
	}
}

func chunks(b []byte, size int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(size, len(b))
		out = append(out, bytes.Clone(b[:n]))
		b = b[n:]
	}
	return out
}

// Streams the client opens after the first GOAWAY are counted, and of
// those only the ones the final GOAWAY covers.
func TestH2ConnCountsStreamsBetweenGoaways(t *testing.T) {
	rc := &recConn{}
	w := newH2Conn(rc, rc, true, make(chan struct{}, 1))
	read := func(b []byte) {
		t.Helper()
		rc.in = append(rc.in, b)
		if _, err := io.ReadFull(w, make([]byte, len(b))); err != nil {
			t.Fatal(err)
		}
	}
	write := func(b []byte) {
		t.Helper()
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	write(settingsFrame(t))
	read(headersFrame(t, 1, true)) // before the drain
	w.ask()
	w.flush()
	read(headersFrame(t, 3, true))
	read(headersFrame(t, 1, true)) // trailers of stream 1: not a new stream
	read(headersFrame(t, 5, false))
	read(continuationFrame(t, 5, true))
	read(headersFrame(t, 7, true)) // too late: above the final GOAWAY
	write(goAwayFrame(t, 5))
	read(headersFrame(t, 9, true)) // after the final GOAWAY
	ended, between := w.twoStep()
	if !ended || between != 2 {
		t.Errorf("twoStep() = %v, %d; want true, 2 (streams 3 and 5)", ended, between)
	}
}

// FuzzH2ConnWrite: whatever frames the server writes, cut however, and
// whenever the drain asks, the output is the server's bytes with the
// first step added once, between two frames, outside any header block,
// after the first frame and before any GOAWAY of the server's.
func FuzzH2ConnWrite(f *testing.F) {
	f.Add([]byte{1, 0, 4, 1, 1, 9, 0, 9, 4, 0, 5}, []byte{3, 7, 1}, uint8(2))
	f.Add([]byte{4, 0, 0, 7, 0, 0}, []byte{1}, uint8(0))
	f.Fuzz(func(t *testing.T, spec, cuts []byte, askAt uint8) {
		server := fuzzFrames(spec)
		rc := &recConn{}
		w := newH2Conn(rc, rc, true, make(chan struct{}, 1))
		var pos, k int
		for pos < len(server) {
			if k == int(askAt) {
				w.ask()
				w.flush()
			}
			n := len(server) - pos
			if k < len(cuts) {
				n = min(n, 1+int(cuts[k]))
			}
			if _, err := w.Write(server[pos : pos+n]); err != nil {
				t.Fatal(err)
			}
			pos += n
			k++
		}
		out := rc.written()
		ours := frames(t, func(fr *http2.Framer) error {
			if err := fr.WriteGoAway(1<<31-1, http2.ErrCodeNo, nil); err != nil {
				return err
			}
			return fr.WritePing(false, w.ping)
		})
		at := bytes.Index(out, ours)
		if at < 0 {
			if !bytes.Equal(out, server) {
				t.Fatalf("no first step, and the server's bytes changed")
			}
			return
		}
		rest := slices.Delete(bytes.Clone(out), at, at+len(ours))
		if !bytes.Equal(rest, server) {
			t.Fatalf("the server's bytes changed around the first step")
		}
		var s frameScanner
		s.scan(server[:at], func(frameEvent) bool { return true })
		if !s.atBoundary() || s.inBlock || s.frames == 0 || s.goAways > 0 {
			t.Fatalf("first step at byte %d: boundary %v, in header block %v, after %d frames and %d GOAWAYs",
				at, s.atBoundary(), s.inBlock, s.frames, s.goAways)
		}
	})
}

// fuzzFrames turns spec into valid framing: each frame takes 3 bytes of
// spec (type, flags, payload length).
func fuzzFrames(spec []byte) []byte {
	var b []byte
	for ; len(spec) >= 3; spec = spec[3:] {
		typ, flags, n := spec[0]%10, spec[1], int(spec[2])
		b = append(b, 0, 0, byte(n), typ, flags, 0, 0, 0, 1)
		b = append(b, bytes.Repeat([]byte{0x55}, n)...)
	}
	return b
}

// FuzzFrameScanner: the scanner sees the same frames however the bytes
// are cut, and never reads past what it is given.
func FuzzFrameScanner(f *testing.F) {
	f.Add([]byte(clientPreface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x08\x06\x01\x00\x00\x00\x00abcdefgh"), []byte{5, 1, 30}, true)
	f.Add([]byte("\x00\x00\x03\x01\x00\x00\x00\x00\x01abc\x00\x00\x00\x09\x04\x00\x00\x00\x01"), []byte{2}, false)
	f.Fuzz(func(t *testing.T, data, cuts []byte, preface bool) {
		type event struct {
			ev           frameEvent
			typ          http2.FrameType
			flags        byte
			stream       uint32
			length       int
			keep         string
			inBlock      bool
			frames, goAw int
		}
		run := func(split func(yield func([]byte))) []event {
			var s frameScanner
			if preface {
				s.skip = len(clientPreface)
			}
			var evs []event
			on := func(ev frameEvent) bool {
				e := event{ev: ev, typ: s.typ, flags: s.flags, stream: s.stream, length: s.length, inBlock: s.inBlock, frames: s.frames, goAw: s.goAways}
				if ev == frameEnd {
					e.keep = string(s.keep[:s.nkeep])
				}
				evs = append(evs, e)
				return true
			}
			split(func(p []byte) {
				if n := s.scan(p, on); n != len(p) {
					t.Fatalf("scan took %d of %d bytes", n, len(p))
				}
			})
			return evs
		}
		whole := run(func(yield func([]byte)) { yield(data) })
		cut := run(func(yield func([]byte)) {
			rest := data
			for i := 0; len(rest) > 0; i++ {
				n := len(rest)
				if i < len(cuts) {
					n = min(n, int(cuts[i]))
				}
				yield(rest[:n])
				rest = rest[n:]
			}
		})
		if !slices.Equal(whole, cut) {
			t.Fatalf("events differ when cut:\nwhole %v\ncut   %v", whole, cut)
		}
	})
}
