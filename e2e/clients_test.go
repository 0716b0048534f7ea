package e2e

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
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/handoff-go/handoff/internal/testkit"
)

// Load clients for the loss test. Each one counts every outcome in a tally
// and never retries a request: a request that fails is a failure.

// requestTimeout bounds every request of the load clients.
const requestTimeout = 10 * time.Second

// tally counts outcomes by client kind.
type tally struct {
	mu       sync.Mutex
	ok       map[string]int
	failed   map[string]map[string]int // kind → failure kind → count
	examples []string                  // the first few failures, verbatim
	lost     []string                  // local addresses of connections whose request failed
	gens     map[string]bool           // generations that answered
	resumes  map[string]int            // kind → reconnections after a goodbye
}

func newTally() *tally {
	return &tally{ok: map[string]int{}, failed: map[string]map[string]int{}, gens: map[string]bool{}, resumes: map[string]int{}}
}

func (t *tally) success(kind, gen string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ok[kind]++
	if gen != "" {
		t.gens[gen] = true
	}
}

func (t *tally) fail(kind, what string, detail error) {
	t.failAt(kind, what, detail, "")
}

// failAt records a failure on the connection whose local address is
// local, when known, so that a test can tell which server process held
// it; a failure whose error names its connection (a net.OpError) records
// that one.
func (t *tally) failAt(kind, what string, detail error, local string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var oe *net.OpError
	if errors.As(detail, &oe) && oe.Source != nil {
		local = oe.Source.String()
	}
	if local != "" {
		t.lost = append(t.lost, local)
	}
	if t.failed[kind] == nil {
		t.failed[kind] = map[string]int{}
	}
	t.failed[kind][what]++
	if len(t.examples) < 10 {
		t.examples = append(t.examples, fmt.Sprintf("%s %s at %s: %v", kind, what, time.Now().Format("15:04:05.000"), detail))
	}
}

// failOn records a failure on the connection c, whose local address says
// which server process held it.
func (t *tally) failOn(kind, what string, detail error, c net.Conn) {
	var oe *net.OpError
	if errors.As(detail, &oe) && oe.Source != nil {
		t.fail(kind, what, detail) // recorded from the error
		return
	}
	t.fail(kind, what, detail)
	t.mu.Lock()
	t.lost = append(t.lost, c.LocalAddr().String())
	t.mu.Unlock()
}

func (t *tally) resumed(kind string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.resumes[kind]++
}

func (t *tally) okCount(kind string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ok[kind]
}

// failures is the total number of failed requests.
func (t *tally) failures() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, m := range t.failed {
		for _, c := range m {
			n += c
		}
	}
	return n
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var kinds []string
	for k := range t.ok {
		kinds = append(kinds, k)
	}
	for k := range t.failed {
		if _, ok := t.ok[k]; !ok {
			kinds = append(kinds, k)
		}
	}
	slices.Sort(kinds)
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %9s %9s  %s\n", "client", "ok", "resumed", "failed")
	for _, k := range kinds {
		fmt.Fprintf(&b, "%-16s %9d %9d  %v\n", k, t.ok[k], t.resumes[k], t.failed[k])
	}
	return b.String()
}

// waitAllKinds waits until every client kind in kinds has succeeded once
// more than it had when called.
func waitAllKinds(t *testing.T, tl *tally, what string, kinds ...string) {
	t.Helper()
	base := map[string]int{}
	for _, k := range kinds {
		base[k] = tl.okCount(k)
	}
	testkit.WaitFor(t, time.Minute, what, func() error {
		for _, k := range kinds {
			if tl.okCount(k) <= base[k] {
				return fmt.Errorf("no %s success yet", k)
			}
		}
		return nil
	})
}

// spawn runs f(0) to f(n-1), each on its own goroutine, in wg.
func spawn(wg *sync.WaitGroup, n int, f func(i int)) {
	for i := range n {
		wg.Go(func() { f(i) })
	}
}

// loop runs one client until ctx ends, for at most n rounds and d time.
func loop(ctx context.Context, n int, d time.Duration, round func()) {
	deadline := time.Now().Add(d)
	for i := 0; i < n && ctx.Err() == nil && time.Now().Before(deadline); i++ {
		round()
	}
}

// keepAliveClient sends requests on one connection for as long as the
// server keeps it, 30% of them POST /echo with a body it checks.
func keepAliveClient(ctx context.Context, addr string, t *tally, seed uint64) {
	const kind = "h1-keepalive"
	rng := rand.New(rand.NewPCG(seed, 1))
	var c *testkit.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	loop(ctx, 1_000_000, 5*time.Minute, func() {
		if c == nil {
			var err error
			if c, err = testkit.DialTimeout(addr, requestTimeout); err != nil {
				t.fail(kind, testkit.ErrorKind(err), err)
				return
			}
		}
		req, want := testkit.MixedRequest(rng, addr, 8192)
		resp, body, err := c.Do(req)
		switch {
		case err != nil:
			t.failOn(kind, testkit.ErrorKind(err), err, c)
			c.Close()
			c = nil
			return
		case resp.StatusCode != http.StatusOK:
			t.fail(kind, "status "+strconv.Itoa(resp.StatusCode), errors.New(string(body)))
		case want != nil && !bytes.Equal(body, want):
			t.fail(kind, "wrong echo", fmt.Errorf("%d bytes back, %d sent", len(body), len(want)))
		default:
			t.success(kind, resp.Header.Get("X-Generation"))
		}
		if resp.Close {
			c.Close()
			c = nil
		}
	})
}

// newConnClient opens a new connection for every request.
func newConnClient(ctx context.Context, addr string, t *tally) {
	const kind = "h1-newconn"
	loop(ctx, 1_000_000, 5*time.Minute, func() {
		c, err := testkit.DialTimeout(addr, requestTimeout)
		if err != nil {
			t.fail(kind, testkit.ErrorKind(err), err)
			return
		}
		defer c.Close()
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Close = true
		resp, _, err := c.Do(req)
		switch {
		case err != nil:
			t.failOn(kind, testkit.ErrorKind(err), err, c)
		case resp.StatusCode != http.StatusOK:
			t.fail(kind, "status "+strconv.Itoa(resp.StatusCode), nil)
		default:
			t.success(kind, resp.Header.Get("X-Generation"))
		}
	})
}

// h2Client is Go's HTTP/2 client over h2c: several streams at once on
// one connection, GET / and POST /echo.
func h2Client(ctx context.Context, addr string, t *tally, streams int) {
	const kind = "h2c"
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: requestTimeout}
	var wg sync.WaitGroup
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(s), 2))
			loop(ctx, 1_000_000, 5*time.Minute, func() {
				var want []byte
				req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
				if rng.IntN(10) < 3 {
					want = []byte(strconv.FormatUint(rng.Uint64(), 36))
					req, _ = http.NewRequest("POST", "http://"+addr+"/echo", bytes.NewReader(want))
				}
				// The connection the stream went on, for a failure that
				// does not name it (an unexpected EOF).
				var local string
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(ci httptrace.GotConnInfo) { local = ci.Conn.LocalAddr().String() },
				}))
				resp, err := c.Do(req)
				if err != nil {
					t.failAt(kind, testkit.ErrorKind(err), err, local)
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case err != nil:
					t.failAt(kind, "body "+testkit.ErrorKind(err), err, local)
				case resp.ProtoMajor != 2:
					t.fail(kind, "not HTTP/2", errors.New(resp.Proto))
				case resp.StatusCode != http.StatusOK:
					t.fail(kind, "status "+strconv.Itoa(resp.StatusCode), nil)
				case want != nil && !bytes.Equal(body, want):
					t.fail(kind, "wrong echo", nil)
				default:
					t.success(kind, resp.Header.Get("X-Generation"))
				}
			})
		}()
	}
	wg.Wait()
}

// sseClient follows GET /events across generations: after each goodbye it
// reconnects with Last-Event-ID, and every tick must follow the previous
// one, with no gap and no repeat.
func sseClient(ctx context.Context, addr string, t *tally) {
	const kind = "sse"
	last := int64(-1)
	loop(ctx, 10_000, 5*time.Minute, func() {
		c, err := testkit.DialTimeout(addr, requestTimeout)
		if err != nil {
			t.fail(kind, testkit.ErrorKind(err), err)
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		req, _ := http.NewRequest("GET", "http://"+addr+"/events", nil)
		if last >= 0 {
			req.Header.Set("Last-Event-ID", strconv.FormatInt(last, 10))
		}
		c.SetDeadline(time.Now().Add(requestTimeout))
		if err := req.Write(c); err != nil {
			t.fail(kind, testkit.ErrorKind(err), err)
			return
		}
		resp, err := http.ReadResponse(c.Reader, req)
		if err != nil {
			t.fail(kind, testkit.ErrorKind(err), err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.fail(kind, "status "+strconv.Itoa(resp.StatusCode), nil)
			return
		}
		gen := resp.Header.Get("X-Generation")
		goodbye := false
		sc := bufio.NewScanner(resp.Body)
		var id int64 = -1
		var event string
		for {
			c.SetReadDeadline(time.Now().Add(requestTimeout)) // a tick comes every second
			if !sc.Scan() {
				break
			}
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				id, _ = strconv.ParseInt(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				event = line[7:]
			case line == "":
				switch event {
				case "tick":
					if last >= 0 && id != last+1 {
						t.fail(kind, "gap", fmt.Errorf("tick %d after %d", id, last))
					} else {
						t.success(kind, gen)
					}
					last = id
				case "reconnect":
					goodbye = true
				}
				event, id = "", -1
			}
		}
		if ctx.Err() != nil {
			return // the test stopped this client
		}
		if err := sc.Err(); err != nil || !goodbye {
			t.fail(kind, "stream ended without goodbye", err)
			return
		}
		t.resumed(kind)
	})
}

// wsClient echoes messages over a WebSocket. A close with 1012 (service
// restart) makes it reconnect and send again the message that was not
// answered; anything else is a failure.
func wsClient(ctx context.Context, addr string, t *tally, seed uint64) {
	const kind = "websocket"
	rng := rand.New(rand.NewPCG(seed, 4))
	var c *websocket.Conn
	var pending []byte
	defer func() {
		if c != nil {
			c.CloseNow()
		}
	}()
	loop(ctx, 1_000_000, 5*time.Minute, func() {
		if c == nil {
			dctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			var err error
			c, _, err = websocket.Dial(dctx, "ws://"+addr+"/ws", nil)
			cancel()
			if err != nil {
				t.fail(kind, testkit.ErrorKind(err), err)
				c = nil
				return
			}
		}
		if pending == nil {
			pending = []byte(strconv.FormatUint(rng.Uint64(), 36))
		}
		rctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		err := c.Write(rctx, websocket.MessageText, pending)
		var got []byte
		if err == nil {
			_, got, err = c.Read(rctx)
		}
		if err != nil {
			c.CloseNow()
			c = nil
			if websocket.CloseStatus(err) == websocket.StatusServiceRestart {
				t.resumed(kind)
				return // reconnect and send pending again
			}
			t.fail(kind, testkit.ErrorKind(err), err)
			pending = nil
			return
		}
		if !bytes.Equal(got, pending) {
			t.fail(kind, "wrong echo", nil)
		} else {
			t.success(kind, "")
		}
		pending = nil
	})
}

// backgroundLoad runs keep-alive, new-connection and HTTP/2 clients
// against addr until stop is called, which returns once every client has
// finished its last request. The tally counts as they go.
func backgroundLoad(addr string) (stop func(), tl *tally) {
	ctx, cancel := context.WithCancel(context.Background())
	tl = newTally()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); keepAliveClient(ctx, addr, tl, uint64(100+i)) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); newConnClient(ctx, addr, tl) }()
	go func() { defer wg.Done(); h2Client(ctx, addr, tl, 2) }()
	return func() {
		cancel()
		wg.Wait()
	}, tl
}
