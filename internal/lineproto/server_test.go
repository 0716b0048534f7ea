package lineproto_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/lineproto"
	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
)

// serve runs a Server of handle under a standalone Upgrader.
func serve(t *testing.T, handle func(string) string, drain time.Duration) (*upgrade.Upgrader, string) {
	t.Helper()
	s := testkit.Start(t, upgrade.Options{DrainTimeout: drain}, func(*upgrade.Upgrader) upgrade.Server {
		return lineproto.NewServer(handle)
	})
	return s.Upgrader, s.Addr
}

// client speaks the line protocol on its own connection.
type client struct {
	t *testing.T
	*testkit.Conn
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c := testkit.Dial(t, addr)
	c.SetDeadline(time.Now().Add(time.Minute)) // a hung server fails the test
	return &client{t: t, Conn: c}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) expect(want string) {
	c.t.Helper()
	got, err := c.Reader.ReadString('\n')
	if err != nil || got != want+"\n" {
		if len(got) > 80 {
			got = got[:80] + "..."
		}
		c.t.Fatalf("read %q, %v; want %q", got, err, want)
	}
}

// stop shuts u down in the background; the result comes on the channel.
func stop(u *upgrade.Upgrader) <-chan upgrade.CloseCounts {
	done := make(chan upgrade.CloseCounts, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		u.Shutdown(ctx)
		done <- u.Status().LastDrain.Closed
	}()
	return done
}

func TestAnswersInOrder(t *testing.T) {
	_, addr := serve(t, strings.ToUpper, time.Minute)
	c := dial(t, addr)
	c.send("a\nb\r\nc")
	c.send("d\n")
	for _, want := range []string{"A", "B", "CD"} {
		c.expect(want)
	}
	if u := strings.Repeat("x", lineproto.MaxLineLen+1); true {
		c.send(u + "\n")
		c.expect("ERROR line too long")
	}
}

// The drain finishes a message whose first part it has read, answers it,
// and only then says goodbye; an idle connection gets the goodbye at once.
func TestDrainFinishesPartialMessage(t *testing.T) {
	u, addr := serve(t, strings.ToUpper, time.Minute)
	busy, idle := dial(t, addr), dial(t, addr)
	idle.send("x\n")
	idle.expect("X")
	// One write, so that the server reads "hal" with "sync" in one read:
	// once "SYNC" is back, "hal" is in the server's hands.
	busy.send("sync\nhal")
	busy.expect("SYNC")

	done := stop(u)
	idle.expect(lineproto.Reconnect)
	<-u.Draining()
	busy.send("f\n")
	busy.expect("HALF")
	busy.expect(lineproto.Reconnect)
	for _, c := range []*client{busy, idle} {
		if _, err := c.Reader.ReadByte(); err != io.EOF {
			t.Errorf("after RECONNECT: read %v, want EOF (the server half-closed)", err)
		}
		c.Close()
	}
	closed := <-done
	if closed.AfterResponse != 2 || closed.Forced != 0 {
		t.Errorf("drain: %+v, want 2 closed after RECONNECT and 0 forced", closed)
	}
}

// A message that never ends holds its connection until the drain
// deadline, which closes it.
func TestDrainForcesUnfinishedMessage(t *testing.T) {
	u, addr := serve(t, strings.ToUpper, 300*time.Millisecond)
	c := dial(t, addr)
	c.send("sync\nnever ends")
	c.expect("SYNC")
	closed := <-stop(u)
	if closed.Forced != 1 {
		t.Errorf("drain with an unfinished message: %+v, want 1 forced", closed)
	}
	if line, err := c.Reader.ReadString('\n'); err == nil {
		t.Errorf("read %q after the forced close, want an error", line)
	}
}

// A client that closes its end during the drain, before the server said
// goodbye, is counted as closed by the peer.
func TestDrainCountsClientClose(t *testing.T) {
	u, addr := serve(t, strings.ToUpper, time.Minute)
	busy, probe := dial(t, addr), dial(t, addr)
	busy.send("sync\nhal")
	busy.expect("SYNC")
	done := stop(u)
	// The idle probe's goodbye shows that the drain has woken busy too,
	// which now waits for the rest of its message.
	probe.expect(lineproto.Reconnect)
	probe.Close()
	busy.Close()
	if closed := <-done; closed.ByPeer != 1 || closed.AfterResponse != 1 || closed.Total() != 2 {
		t.Errorf("drain: %+v, want 1 closed by the peer and 1 after RECONNECT", closed)
	}
}

func TestStats(t *testing.T) {
	u, addr := serve(t, func(s string) string { return s }, time.Minute)
	c := dial(t, addr)
	for i := range 3 {
		c.send(fmt.Sprintf("%d\n", i))
		c.expect(fmt.Sprint(i))
	}
	if st := u.Status(); st.Requests != 3 || st.Connections != 1 || st.InFlight != 0 {
		t.Errorf("status: %d requests, %d connections, %d in flight; want 3, 1, 0", st.Requests, st.Connections, st.InFlight)
	}
}

// Clients that keep several messages in flight all get RECONNECT, after
// answers to every message they sent before it, in order. Regression: a
// connection that answered a message during the drain with the next
// message's first bytes already read closed without RECONNECT.
func TestDrainPipeliningClients(t *testing.T) {
	for round := range 10 {
		u, addr := serve(t, strings.ToUpper, time.Minute)
		clients := make([]*client, 8)
		for i := range clients {
			clients[i] = dial(t, addr)
		}
		results := make(chan error, len(clients))
		busy := make(chan struct{}, len(clients))
		for i, c := range clients {
			go func() { results <- pipeline(c, i, busy) }()
		}
		for range clients {
			<-busy
		}
		done := stop(u)
		for range clients {
			if err := <-results; err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
		<-done
	}
}

// pipeline sends messages 4 at a time, reads their answers, and returns
// nil at RECONNECT. It signals busy once it has had some answers.
func pipeline(c *client, id int, busy chan<- struct{}) error {
	defer c.Close()
	signaled := false
	defer func() {
		if !signaled {
			busy <- struct{}{} // failed early: do not keep the test waiting
		}
	}()
	next := 0 // the message whose answer comes next
	for k := 0; k < 100_000; k++ {
		for j := range 4 {
			fmt.Fprintf(c, "m%d %d\n", id, next+j)
		}
		for range 4 {
			line, err := c.Reader.ReadString('\n')
			if err != nil {
				return fmt.Errorf("client %d: %v after %d answers, want %s first", id, err, next, lineproto.Reconnect)
			}
			if line == lineproto.Reconnect+"\n" {
				return nil
			}
			if want := fmt.Sprintf("M%d %d\n", id, next); line != want {
				return fmt.Errorf("client %d: answer %q, want %q", id, line, want)
			}
			next++
		}
		if k == 3 {
			busy <- struct{}{}
			signaled = true
		}
	}
	return fmt.Errorf("client %d: no RECONNECT", id)
}
