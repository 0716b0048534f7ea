package upgrade_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"time"

	"github.com/handoff-go/handoff/internal/lineproto"
	"github.com/handoff-go/handoff/upgrade"
)

// A raw TCP server: a line protocol, each line in answered by one line
// out. Its Server (internal/lineproto, 200 lines) implements Drain so that
// no message is lost: each connection finishes the message in hand, then
// sends RECONNECT in place of the next answer and closes, and the client
// sends what was left unanswered to the next generation. Here the drain
// begins while a message is being handled, and the server is stopped from
// code; SIGHUP drains the same way.
func Example_rawTCP() {
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	handling, finish := make(chan struct{}), make(chan struct{})
	lines := lineproto.NewServer(func(line string) string {
		if line == "slow" {
			close(handling)
			<-finish // still working when the drain begins
		}
		return strings.ToUpper(line)
	})
	if err := u.Serve(ln, lines, &upgrade.ServeOptions{Name: "lines"}); err != nil {
		log.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		log.Fatal(err)
	}

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	answer := func() {
		line, err := r.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(line)
	}
	fmt.Fprint(c, "hello\nslow\n")
	answer()
	<-handling

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- u.Shutdown(ctx) }()
	<-u.Draining()
	close(finish)
	answer() // the message in hand is answered
	answer() // then the client is told to reconnect
	c.Close()
	if err := <-stopped; err != nil {
		log.Fatal(err)
	}
	closed := u.Status().LastDrain.Closed
	fmt.Printf("closed after RECONNECT: %d, forced: %d\n", closed.AfterResponse, closed.Forced)
	// Output:
	// HELLO
	// SLOW
	// RECONNECT
	// closed after RECONNECT: 1, forced: 0
}
