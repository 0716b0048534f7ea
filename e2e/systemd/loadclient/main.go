// Command loadclient sends load to the server inside a test container and
// counts every outcome. The real-systemd tests copy it into the container
// (built static) and run it there with nsenter: the container has a
// private network namespace, so only a client inside reaches it.
//
// It never retries: HTTP/1.1 keep-alive connections, written and read by
// hand (30% of requests POST /echo with a body it checks; after an answer
// with Connection: close it dials anew), and clients that open a new
// connection for every GET /. It prints "running" once a request has
// succeeded, runs until its standard input is closed or -max has passed,
// lets each request in flight finish, and prints one JSON summary line.
//
// Usage: loadclient [-addr 127.0.0.1:8080] [-keepalive 3] [-newconn 2] [-pause 2ms] [-max 10m]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
)

// requestTimeout bounds each request.
const requestTimeout = 10 * time.Second

// Summary is what loadclient prints when it stops.
type Summary struct {
	OK       map[string]int            `json:"ok"`       // client kind → successful requests
	Failed   map[string]map[string]int `json:"failed"`   // client kind → failure kind → count
	Examples []string                  `json:"examples"` // the first failures, verbatim
	Versions map[string]int            `json:"versions"` // server version → answers of GET /
}

type tally struct {
	mu      sync.Mutex
	s       Summary
	running chan struct{} // closed at the first success
	once    sync.Once
}

func (t *tally) success(kind, version string) {
	t.mu.Lock()
	t.s.OK[kind]++
	if version != "" {
		t.s.Versions[version]++
	}
	t.mu.Unlock()
	t.once.Do(func() { close(t.running) })
}

func (t *tally) fail(kind, what string, detail error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.s.Failed[kind] == nil {
		t.s.Failed[kind] = map[string]int{}
	}
	t.s.Failed[kind][what]++
	if len(t.s.Examples) < 20 {
		t.s.Examples = append(t.s.Examples, fmt.Sprintf("%s %s %s: %v", time.Now().Format("15:04:05.000000"), kind, what, detail))
	}
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadclient:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:8080", "server `host:port`")
	keepalive := flag.Int("keepalive", 3, "keep-alive clients")
	newconn := flag.Int("newconn", 2, "clients with a new connection per request")
	pause := flag.Duration("pause", 2*time.Millisecond, "pause of each client between requests")
	maxRun := flag.Duration("max", 10*time.Minute, "stop after this long even if standard input stays open")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *maxRun)
	defer cancel()
	go func() { // ends when standard input closes; then the clients stop
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	t := &tally{
		s:       Summary{OK: map[string]int{}, Failed: map[string]map[string]int{}, Versions: map[string]int{}},
		running: make(chan struct{}),
	}
	go func() { // ends at the first success or when the run ends
		select {
		case <-t.running:
			fmt.Println("running")
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	for i := range *keepalive {
		wg.Go(func() { keepAliveClient(ctx, *addr, *pause, t, uint64(i)) })
	}
	for range *newconn {
		wg.Go(func() { newConnClient(ctx, *addr, *pause, t) })
	}
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(t.s)
}

// version returns the version a GET / answer names.
func version(body []byte) string {
	var v struct {
		Version string `json:"version"`
	}
	json.Unmarshal(body, &v)
	return v.Version
}

// wait pauses between requests; it reports false once ctx is done.
func wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func keepAliveClient(ctx context.Context, addr string, pause time.Duration, t *tally, seed uint64) {
	const kind = "h1-keepalive"
	rng := rand.New(rand.NewPCG(seed, 1))
	var c *testkit.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for wait(ctx, pause) {
		if c == nil {
			var err error
			if c, err = testkit.DialTimeout(addr, requestTimeout); err != nil {
				t.fail(kind, testkit.ErrorKind(err), err)
				continue
			}
		}
		req, want := testkit.MixedRequest(rng, addr, 4096)
		resp, body, err := c.Do(req)
		switch {
		case err != nil:
			t.fail(kind, testkit.ErrorKind(err), err)
			c.Close()
			c = nil
			continue
		case resp.StatusCode != http.StatusOK:
			t.fail(kind, "status "+strconv.Itoa(resp.StatusCode), errors.New(string(body)))
		case want != nil && !bytes.Equal(body, want):
			t.fail(kind, "wrong echo", fmt.Errorf("%d bytes back, %d sent", len(body), len(want)))
		case want != nil:
			t.success(kind, "")
		default:
			t.success(kind, version(body))
		}
		if resp.Close {
			c.Close()
			c = nil
		}
	}
}

func newConnClient(ctx context.Context, addr string, pause time.Duration, t *tally) {
	const kind = "h1-newconn"
	for wait(ctx, pause) {
		c, err := testkit.DialTimeout(addr, requestTimeout)
		if err != nil {
			t.fail(kind, testkit.ErrorKind(err), err)
			continue
		}
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Close = true
		resp, body, err := c.Do(req)
		c.Close()
		switch {
		case err != nil:
			t.fail(kind, testkit.ErrorKind(err), err)
		case resp.StatusCode != http.StatusOK:
			t.fail(kind, "status "+strconv.Itoa(resp.StatusCode), errors.New(string(body)))
		default:
			t.success(kind, version(body))
		}
	}
}
