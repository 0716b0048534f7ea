package upgrade_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// BenchmarkServeHTTP measures what serving through upgrade.HTTP costs per
// request: the same handler behind a plain http.Server and behind the same
// server run by a standalone Upgrader, over loopback keep-alive
// connections, in-process. Its sub-benchmarks run one server each, for
// benchstat and -benchmem:
//
//		go test -run '^$' -bench 'ServeHTTP$' -benchmem -count 10 ./upgrade
//
//	  - http1: one connection, one request at a time, through a client that
//	    allocates nothing, so allocs/op is the server's alone.
//	  - http1-parallel: 8 connections at once, which also shows contention
//	    on anything the connections share.
//	  - h2c: net/http's own client over unencrypted HTTP/2, one connection.
//
// The client's work is the same in both halves of a pair, so the
// difference of a pair is what upgrade.HTTP adds. BenchmarkServeHTTPRatio
// gives that difference from a single run.
func BenchmarkServeHTTP(b *testing.B) {
	for _, proto := range []string{"http1", "http1-parallel", "h2c"} {
		for _, mode := range []string{"plain", "upgrade"} {
			b.Run(proto+"/"+mode, func(b *testing.B) {
				c := newBenchClient(b, proto, benchServer(b, mode))
				b.ReportAllocs()
				b.ResetTimer()
				if err := c.run(b.N); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkServeHTTPRatio runs the pairs of BenchmarkServeHTTP side by
// side: chunks of requests go to the plain server and to the upgrade one
// in turn, so that both see the same machine, however busy it is. It
// reports, per request, each one's wall time, CPU time of the whole
// process (server and client) and heap allocations, and:
//
//   - throughput-ratio: plain's wall time over upgrade's, the "≥ 0.99×"
//     of the goal;
//   - extra-allocs/req: allocations upgrade.HTTP adds to each request.
//
// One op is one request to each server.
func BenchmarkServeHTTPRatio(b *testing.B) {
	const chunk = 500
	for _, proto := range []string{"http1", "http1-parallel", "h2c"} {
		b.Run(proto, func(b *testing.B) {
			clients := [2]*benchClient{
				newBenchClient(b, proto, benchServer(b, "plain")),
				newBenchClient(b, proto, benchServer(b, "upgrade")),
			}
			var wall, cpu [2]time.Duration
			var allocs [2]uint64
			b.ResetTimer()
			for done, i := 0, 0; done < b.N; i++ {
				n := min(chunk, b.N-done)
				for k := range 2 {
					k = (k + i) % 2 // alternate which goes first
					w, c, a, err := clients[k].measure(n)
					if err != nil {
						b.Fatal(err)
					}
					wall[k] += w
					cpu[k] += c
					allocs[k] += a
				}
				done += n
			}
			per := func(d time.Duration) float64 { return float64(d) / float64(b.N) }
			b.ReportMetric(per(wall[0]), "plain-ns/req")
			b.ReportMetric(per(wall[1]), "upgrade-ns/req")
			b.ReportMetric(per(cpu[0]), "plain-cpu-ns/req")
			b.ReportMetric(per(cpu[1]), "upgrade-cpu-ns/req")
			b.ReportMetric(float64(wall[0])/float64(wall[1]), "throughput-ratio")
			b.ReportMetric(float64(allocs[0])/float64(b.N), "plain-allocs/req")
			b.ReportMetric((float64(allocs[1])-float64(allocs[0]))/float64(b.N), "extra-allocs/req")
		})
	}
}

// benchClient sends GET /healthz over one protocol.
type benchClient struct {
	b     *testing.B
	proto string
	conns []*benchConn // http1: one per goroutine
	h2    *http.Client
	url   string
}

func newBenchClient(b *testing.B, proto, addr string) *benchClient {
	b.Helper()
	c := &benchClient{b: b, proto: proto, url: "http://" + addr + "/healthz"}
	switch proto {
	case "h2c":
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &p}
		b.Cleanup(tr.CloseIdleConnections)
		c.h2 = &http.Client{Transport: tr}
	default:
		n := 1
		if proto == "http1-parallel" {
			n = 8
		}
		for range n {
			bc, err := dialBench(addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { bc.c.Close() })
			c.conns = append(c.conns, bc)
		}
	}
	return c
}

// run sends n requests: over one connection, or spread over the
// connections of http1-parallel, each in a goroutine of its own.
func (c *benchClient) run(n int) error {
	if c.h2 != nil {
		buf := make([]byte, len(healthzBody))
		for range n {
			resp, err := c.h2.Get(c.url)
			if err != nil {
				return err
			}
			got, _ := io.ReadFull(resp.Body, buf)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || got != len(healthzBody) {
				return fmt.Errorf("GET /healthz over h2c: status %d, %d bytes of body", resp.StatusCode, got)
			}
		}
		return nil
	}
	if len(c.conns) == 1 {
		for range n {
			if err := c.conns[0].roundTrip(); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error, len(c.conns))
	for i, bc := range c.conns {
		share := n / len(c.conns)
		if i < n%len(c.conns) {
			share++
		}
		go func() { // ends after share requests or an error
			for range share {
				if err := bc.roundTrip(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range c.conns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// measure runs n requests and returns the wall time, the CPU time of this
// process and the heap allocations they took.
func (c *benchClient) measure(n int) (wall, cpu time.Duration, allocs uint64, err error) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m0 := ms.Mallocs
	cpu0 := cpuTime()
	t0 := time.Now()
	err = c.run(n)
	wall = time.Since(t0)
	cpu = cpuTime() - cpu0
	runtime.ReadMemStats(&ms)
	// ReadMemStats allocates nothing itself.
	return wall, cpu, ms.Mallocs - m0, err
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// healthzBody is what the benchmark handler answers, as the reference
// server's GET /healthz does.
var healthzBody = []byte(`{"status":"ok"}` + "\n")

var jsonType = []string{"application/json"}

func healthz(w http.ResponseWriter, r *http.Request) {
	w.Header()["Content-Type"] = jsonType
	w.Write(healthzBody)
}

// benchServer serves healthz on a loopback port: behind a plain
// http.Server ("plain"), or behind the same server run by a standalone
// Upgrader ("upgrade"). It is stopped when the benchmark ends.
func benchServer(b *testing.B, mode string) string {
	b.Helper()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: http.HandlerFunc(healthz), Protocols: &p, ReadHeaderTimeout: 5 * time.Second}
	if mode == "plain" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(ln) // returns when Close closes ln
		b.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if err := u.Serve(ln, upgrade.HTTP(srv), nil); err != nil {
		b.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		b.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- u.Run(context.Background()) }() // returns after Shutdown
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		u.Shutdown(ctx)
		<-runErr
	})
	return ln.Addr().String()
}

// benchConn is an HTTP/1.1 keep-alive client for one fixed request that
// allocates nothing per request, so that a benchmark's allocs/op are the
// server's.
type benchConn struct {
	c   net.Conn
	r   *bufio.Reader
	req []byte
}

func dialBench(addr string) (*benchConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &benchConn{c: c, r: bufio.NewReaderSize(c, 4096), req: []byte("GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")}, nil
}

var contentLength = []byte("content-length:")

// roundTrip sends the request and reads the answer: a status line and
// headers up to the empty line, then Content-Length bytes of body.
func (c *benchConn) roundTrip() error {
	if _, err := c.c.Write(c.req); err != nil {
		return err
	}
	n := -1
	first := true
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("read answer: %w", err)
		}
		if first {
			if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
				return fmt.Errorf("status line %q, want 200", line)
			}
			first = false
			continue
		}
		if len(line) <= 2 {
			break
		}
		if len(line) > len(contentLength) && bytes.EqualFold(line[:len(contentLength)], contentLength) {
			n = atoiTrim(line[len(contentLength):])
		}
	}
	if n < 0 {
		return errors.New("answer without Content-Length")
	}
	if _, err := c.r.Discard(n); err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	return nil
}

// atoiTrim parses the decimal number in b, ignoring spaces and CRLF.
func atoiTrim(b []byte) int {
	n := 0
	for _, ch := range b {
		if ch >= '0' && ch <= '9' {
			n = n*10 + int(ch-'0')
		}
	}
	return n
}
