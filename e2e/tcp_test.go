package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/lineproto"
	"github.com/handoff-go/handoff/internal/testkit"
)

// rawUpgrades is how many times the raw TCP and UDP tests upgrade.
const rawUpgrades = 20

// The raw TCP loss test: clients of the line protocol (-tcp-addr) number
// their messages, keep a few in flight, and check every answer, while the
// server goes through rawUpgrades upgrades. On RECONNECT a client
// connects again and sends again only what had no answer. No message may
// be lost (left without an answer) or answered twice, and no connection
// may end without RECONNECT.
func TestLineProtocolUnderRestarts(t *testing.T) {
	taddr := testkit.FreeAddr(t)
	s := start(t, startOptions{args: []string{"-tcp-addr", taddr}})
	pid := s.waitReady(1)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	clients := make([]*lineClient, 8)
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = &lineClient{id: i, addr: taddr, gens: map[string]bool{}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			clients[i].run(ctx)
		}()
	}
	answered := func() (n int64) {
		for _, c := range clients {
			n += c.answered.Load()
		}
		return n
	}
	waitAnswers := func(what string) {
		base := answered()
		testkit.WaitFor(t, time.Minute, what, func() error {
			if answered() < base+int64(10*len(clients)) {
				return errors.New("too few answers yet")
			}
			return nil
		})
	}
	waitAnswers("line clients answered before the upgrades")
	for g := 2; g <= rawUpgrades+1; g++ {
		pid = s.upgrade(pid, g)
	}
	waitAnswers("line clients answered by the last generation")
	for _, c := range clients {
		c.finish.Store(true) // send nothing new; wait for the answers due
	}
	wg.Wait()

	var sent, resent, resumes, answers int64
	gens := map[string]bool{}
	for i, c := range clients {
		sent += int64(c.next - 1)
		resent += c.resent
		resumes += c.resumes
		answers += c.answered.Load()
		for g := range c.gens {
			gens[g] = true
		}
		for _, f := range c.failures {
			t.Errorf("client %d: %s", i, f)
		}
		if n := len(c.pending); n > 0 {
			t.Errorf("client %d: %d messages never answered (lost), from #%d", i, n, c.pending[0])
		}
		if c.resumes < rawUpgrades {
			t.Errorf("client %d reconnected after RECONNECT %d times across %d upgrades; each drain should move it", i, c.resumes, rawUpgrades)
		}
	}
	t.Logf("after %d upgrades: %d messages sent, %d answered, %d sent again after RECONNECT, %d reconnections, %d generations answered",
		rawUpgrades, sent, answers, resent, resumes, len(gens))
	if answers != sent {
		t.Errorf("%d answers to %d messages, want one each", answers, sent)
	}
	if len(gens) != rawUpgrades+1 {
		t.Errorf("%d generations answered, want %d", len(gens), rawUpgrades+1)
	}
	for _, d := range s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "drain finished" && l.Str("reason") == "handoff" }) {
		if d.Int("force_closed") != 0 {
			t.Errorf("generation %d force-closed %d connections", d.Int("generation"), d.Int("force_closed"))
		}
	}
}

// lineWindow is how many messages a line client keeps unanswered at most.
const lineWindow = 4

// lineClient sends "l<id> <n>" for n = 1, 2, … and expects
// "<generation> l<id> <n>" back, in order. Its fields other than answered
// and finish belong to its goroutine until run returns.
type lineClient struct {
	id       int
	addr     string
	answered atomic.Int64
	finish   atomic.Bool // stop sending new messages

	next     int   // number of the next new message
	pending  []int // sent, not yet answered, in order
	resent   int64
	resumes  int64
	gens     map[string]bool
	failures []string
}

func (c *lineClient) fail(format string, a ...any) {
	if len(c.failures) < 10 {
		c.failures = append(c.failures, fmt.Sprintf(time.Now().Format("15:04:05.000 ")+format, a...))
	}
}

func (c *lineClient) run(ctx context.Context) {
	c.next = 1
	deadline := time.Now().Add(10 * time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if c.finish.Load() && len(c.pending) == 0 {
			return
		}
		conn, err := net.DialTimeout("tcp", c.addr, requestTimeout)
		if err != nil {
			c.fail("dial: %v", err)
			time.Sleep(50 * time.Millisecond) // pace: the failure is counted; dial again soon
			continue
		}
		reconnect := c.session(ctx, conn)
		conn.Close()
		if reconnect {
			c.resumes++
		}
	}
	if ctx.Err() != nil || time.Now().After(deadline) {
		c.fail("stopped with %d messages unanswered", len(c.pending))
	}
}

// session runs one connection: it sends again what is pending, then new
// messages, and reads answers until RECONNECT (true) or an error (false).
func (c *lineClient) session(ctx context.Context, conn net.Conn) (reconnect bool) {
	w := bufio.NewWriter(conn)
	r := bufio.NewReader(conn)
	for _, n := range c.pending {
		fmt.Fprintf(w, "l%d %d\n", c.id, n)
		c.resent++
	}
	if err := w.Flush(); err != nil {
		c.fail("send again: %v", err)
		return false
	}
	for ctx.Err() == nil {
		for len(c.pending) < lineWindow && !c.finish.Load() {
			fmt.Fprintf(w, "l%d %d\n", c.id, c.next)
			c.pending = append(c.pending, c.next)
			c.next++
		}
		if err := w.Flush(); err != nil {
			c.fail("send: %v", err)
			return false
		}
		if len(c.pending) == 0 {
			return false // finished
		}
		conn.SetReadDeadline(time.Now().Add(requestTimeout))
		line, err := r.ReadString('\n')
		if err != nil {
			c.fail("read with %d unanswered: %v (connection ended without %s)", len(c.pending), err, lineproto.Reconnect)
			return false
		}
		line = strings.TrimSuffix(line, "\n")
		if line == lineproto.Reconnect {
			return true
		}
		gen, rest, _ := strings.Cut(line, " ")
		want := fmt.Sprintf("l%d %d", c.id, c.pending[0])
		if rest != want {
			c.fail("answer %q, want one to %q (a message lost, answered twice, or out of order)", line, want)
			return false
		}
		c.gens[gen] = true
		c.pending = c.pending[1:]
		c.answered.Add(1)
		time.Sleep(time.Millisecond) // pace: the machine is shared
	}
	return false
}

// The UDP echo (-udp-addr) answers across upgrades. A client sends
// numbered datagrams all along and counts those never answered; after
// each upgrade the test checks that the new generation answers. Loss is
// reported, not asserted: UDP promises no delivery, and the count is the
// measurement.
func TestUDPEchoAcrossUpgrades(t *testing.T) {
	uaddr := testkit.FreeUDPAddr(t)
	s := start(t, startOptions{args: []string{"-udp-addr", uaddr}})
	pid := s.waitReady(1)

	conn, err := net.Dial("udp", uaddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	e := newEchoTally()
	readDone := make(chan struct{})
	go func() { // ends when conn is closed
		defer close(readDone)
		buf := make([]byte, 2048)
		for {
			n, err := conn.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue // ECONNREFUSED from an ICMP error: the datagram is counted lost
			}
			e.answer(string(buf[:n]))
		}
	}()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sendDone := make(chan struct{})
	go func() { // ends with ctx, or after 10 minutes
		defer close(sendDone)
		loop(ctx, 10_000_000, 10*time.Minute, func() {
			fmt.Fprintf(conn, "d %d", e.send())
			time.Sleep(2 * time.Millisecond) // the load: a datagram every 2 ms
		})
	}()

	// echoFrom waits until generation gen answers a datagram.
	echoFrom := func(gen int) {
		t.Helper()
		testkit.WaitFor(t, time.Minute, fmt.Sprintf("generation %d to echo", gen), func() error {
			if !e.answeredBy(strconv.Itoa(gen)) {
				return fmt.Errorf("no echo from generation %d yet", gen)
			}
			return nil
		})
	}
	echoFrom(1)
	for g := 2; g <= rawUpgrades+1; g++ {
		pid = s.upgrade(pid, g)
		echoFrom(g)
	}
	cancel()
	<-sendDone
	// A datagram is lost if it has no answer echoLossTimeout after it was
	// sent: the last were sent just now. The sleep is the measurement's
	// window, not a wait for a state: a late or duplicate answer must
	// have the time to come.
	time.Sleep(echoLossTimeout)
	conn.Close()
	<-readDone

	sent, answered, lost, wrong := e.counts()
	t.Logf("after %d upgrades: %d datagrams sent, %d answered, %d lost (%.3f%%)",
		rawUpgrades, sent, answered, len(lost), 100*float64(len(lost))/float64(sent))
	if len(lost) > 0 {
		t.Logf("lost datagrams: %v", lost)
	}
	if wrong > 0 {
		t.Errorf("%d answers matched no datagram sent, or came twice", wrong)
	}
}

// echoLossTimeout is how long after it was sent a datagram without an
// answer counts as lost. On loopback an answer takes well under a
// millisecond; a generation starting or draining delays none by more
// than a few.
const echoLossTimeout = time.Second

// echoTally counts datagrams sent and answered.
type echoTally struct {
	mu      sync.Mutex
	next    int
	pending map[int]bool
	gens    map[string]bool
	sent    int
	ok      int
	wrong   int
}

func newEchoTally() *echoTally {
	return &echoTally{next: 1, pending: map[int]bool{}, gens: map[string]bool{}}
}

func (e *echoTally) send() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.next
	e.next++
	e.pending[n] = true
	e.sent++
	return n
}

// answer takes an echo, "<generation> d <n>".
func (e *echoTally) answer(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var gen string
	var n int
	if _, err := fmt.Sscanf(s, "%s d %d", &gen, &n); err != nil || !e.pending[n] {
		e.wrong++
		return
	}
	delete(e.pending, n)
	e.gens[gen] = true
	e.ok++
}

func (e *echoTally) answeredBy(gen string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.gens[gen]
}

func (e *echoTally) counts() (sent, answered int, lost []int, wrong int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for n := range e.pending {
		lost = append(lost, n)
	}
	return e.sent, e.ok, lost, e.wrong
}
