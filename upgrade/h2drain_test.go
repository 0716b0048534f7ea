package upgrade_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Raw is an HTTP/2 client connection driven frame by frame, so that a
// test decides when it opens streams and whether it answers a PING.
type h2Raw struct {
	t    *testing.T
	c    net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

// dialH2 connects to addr with HTTP/2: over TLS when tc is set (with ALPN
// "h2"), else h2c with prior knowledge.
func dialH2(t *testing.T, addr string, tc *tls.Config) *h2Raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if tc != nil {
		tc = tc.Clone()
		tc.NextProtos = []string{"h2"}
		tc.ServerName, _, _ = net.SplitHostPort(addr)
		conn := tls.Client(c, tc)
		if err := conn.Handshake(); err != nil {
			t.Fatal(err)
		}
		if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("ALPN: negotiated %q, want h2", p)
		}
		c = conn
	}
	h := &h2Raw{t: t, c: c, fr: http2.NewFramer(c, c)}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// get opens stream id with GET path.
func (h *h2Raw) get(id uint32, path string) {
	h.t.Helper()
	h.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "x"}, {":path", path}} {
		h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	if err != nil {
		h.t.Fatal(err)
	}
}

// next returns the next frame the server sends other than SETTINGS (which
// it acknowledges) and WINDOW_UPDATE. It records responses in resp.
func (h *h2Raw) next(resp map[uint32]*response) http2.Frame {
	h.t.Helper()
	for {
		h.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.fr.WriteSettingsAck()
			}
			continue
		case *http2.WindowUpdateFrame:
			continue
		case *http2.MetaHeadersFrame:
			r := resp[f.StreamID]
			if r == nil {
				r = &response{}
				resp[f.StreamID] = r
			}
			r.status, r.tls = f.PseudoValue("status"), headerValue(f, "x-tls")
			r.done = r.done || f.StreamEnded()
		case *http2.DataFrame:
			if r := resp[f.StreamID]; r != nil {
				r.done = r.done || f.StreamEnded()
			}
		}
		return f
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// response is what a stream got.
type response struct {
	status, tls string
	done        bool // END_STREAM seen
}

// startH2 serves h with HTTP/2: over TLS (and HTTP/1.1) when useTLS, else
// h2c (and HTTP/1.1). It returns the client's TLS config, nil for h2c.
func startH2(t *testing.T, opts upgrade.Options, h http.Handler, useTLS bool) (*testkit.Server, *tls.Config) {
	t.Helper()
	if !useTLS {
		return testkit.StartHTTP(t, opts, h), nil
	}
	cert := testkit.SelfSigned(t, 1)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert.TLS()}},
		// The caller's hook sees the connection net/http's own HTTP/2
		// server would show it, not the drain's wrapper.
		ConnState: func(c net.Conn, st http.ConnState) {
			if _, ok := c.(*tls.Conn); !ok {
				t.Errorf("ConnState(%T, %v), want a *tls.Conn", c, st)
			}
		},
	}
	return testkit.Start(t, opts, func(*upgrade.Upgrader) upgrade.Server { return upgrade.HTTP(srv) }), cert.ClientConfig()
}

// Regression: net/http ends an HTTP/2 connection with one GOAWAY naming
// the last stream it has read, so a stream the client sent at that moment
// is refused unprocessed, and lost with a client that does not retry. The
// drain sends GOAWAY(2^31-1) and a PING first, serves what arrives until
// the PING's ACK, and only then the final GOAWAY.
func TestDrainHTTP2TwoStepGoAway(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "tls"}[useTLS], func(t *testing.T) {
			release := make(chan struct{})
			entered := make(chan struct{}, 1)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/wait" {
					entered <- struct{}{}
					<-release
				}
				w.Header().Set("X-TLS", strconv.FormatBool(r.TLS != nil))
				fmt.Fprint(w, "ok")
			})
			// The final GOAWAY must wait for the ACK, however long it takes.
			s, tc := startH2(t, upgrade.Options{GoAwayAckTimeout: time.Hour}, h, useTLS)
			c := dialH2(t, s.Addr, tc)
			resp := map[uint32]*response{}
			c.get(1, "/wait")
			<-entered
			done := shutdownAsync(t, s)

			var ping [8]byte
			for sawGoAway := false; ; {
				f := c.next(resp)
				if g, ok := f.(*http2.GoAwayFrame); ok {
					if g.LastStreamID != 1<<31-1 || g.ErrCode != http2.ErrCodeNo {
						t.Fatalf("first GOAWAY: last stream %d, %v; want %d, NO_ERROR", g.LastStreamID, g.ErrCode, uint32(1<<31-1))
					}
					sawGoAway = true
				}
				if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
					if !sawGoAway {
						t.Fatal("PING before the first GOAWAY")
					}
					ping = p.Data
					break
				}
			}

			// A stream the client sent before it read the GOAWAY.
			c.get(3, "/")
			for r := resp[3]; r == nil || !r.done; r = resp[3] {
				if g, ok := c.next(resp).(*http2.GoAwayFrame); ok {
					t.Fatalf("GOAWAY (last stream %d) before the PING's ACK", g.LastStreamID)
				}
			}
			if r := resp[3]; r.status != "200" {
				t.Errorf("stream 3, opened between the GOAWAYs: status %s, want 200", r.status)
			}

			if err := c.fr.WritePing(true, ping); err != nil {
				t.Fatal(err)
			}
			close(release)
			var final *http2.GoAwayFrame
			for r := resp[1]; final == nil || r == nil || !r.done; r = resp[1] {
				if g, ok := c.next(resp).(*http2.GoAwayFrame); ok {
					final = g
				}
			}
			if final.LastStreamID != 3 || final.ErrCode != http2.ErrCodeNo {
				t.Errorf("final GOAWAY: last stream %d, %v; want 3, NO_ERROR", final.LastStreamID, final.ErrCode)
			}
			want := strconv.FormatBool(useTLS)
			for id, r := range resp {
				if r.status != "200" || r.tls != want {
					t.Errorf("stream %d: status %s, X-TLS %s; want 200, %s", id, r.status, r.tls, want)
				}
			}
			c.c.Close()

			d := lastDrain(t, s, done)
			want2 := upgrade.CloseCounts{HTTP2: 1, HTTP2TwoStep: 1, StreamsBetweenGoaways: 1}
			if d.Closed != want2 {
				t.Errorf("drain closes = %+v, want %+v", d.Closed, want2)
			}
		})
	}
}

// A client that never acknowledges the PING gets the final GOAWAY once
// GoAwayAckTimeout has passed.
func TestDrainHTTP2FinalGoAwayWithoutAck(t *testing.T) {
	s, _ := startH2(t, upgrade.Options{GoAwayAckTimeout: 100 * time.Millisecond}, okHandler(), false)
	c := dialH2(t, s.Addr, nil)
	resp := map[uint32]*response{}
	c.get(1, "/")
	for r := resp[1]; r == nil || !r.done; r = resp[1] {
		c.next(resp)
	}
	done := shutdownAsync(t, s)
	var goAways []uint32
	for len(goAways) < 2 {
		if g, ok := c.next(resp).(*http2.GoAwayFrame); ok {
			goAways = append(goAways, g.LastStreamID)
		}
	}
	if goAways[0] != 1<<31-1 || goAways[1] != 1 {
		t.Errorf("GOAWAYs with last stream ids %v, want [%d 1]", goAways, uint32(1<<31-1))
	}
	c.c.Close()
	d := lastDrain(t, s, done)
	if d.Closed.HTTP2TwoStep != 1 || d.Closed.Forced != 0 {
		t.Errorf("drain closes = %+v, want one two-step HTTP/2 close and none forced", d.Closed)
	}
}

// The server sends its own GOAWAY when a handler answers with
// Connection: close, or after IdleTimeout; a GOAWAY of ours after it would
// raise the last stream id, which RFC 9113 forbids. The drain then leaves
// the connection to the server's GOAWAY.
func TestDrainHTTP2AfterServerGoAway(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprint(w, "ok")
	})
	s, _ := startH2(t, upgrade.Options{GoAwayAckTimeout: time.Hour}, h, false)
	c := dialH2(t, s.Addr, nil)
	resp := map[uint32]*response{}
	c.get(1, "/")
	var goAways []uint32
	for r := resp[1]; len(goAways) == 0 || r == nil || !r.done; r = resp[1] {
		if g, ok := c.next(resp).(*http2.GoAwayFrame); ok {
			goAways = append(goAways, g.LastStreamID)
		}
	}
	done := shutdownAsync(t, s)
	for {
		c.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		f, err := c.fr.ReadFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			goAways = append(goAways, g.LastStreamID)
		}
	}
	if len(goAways) != 1 || goAways[0] != 1 {
		t.Errorf("GOAWAYs with last stream ids %v, want [1]", goAways)
	}
	d := lastDrain(t, s, done)
	if d.Closed.HTTP2 != 1 || d.Closed.HTTP2TwoStep != 0 || d.Closed.Forced != 0 {
		t.Errorf("drain closes = %+v, want one HTTP/2 close, not two-step, none forced", d.Closed)
	}
}
