package upgrade_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// A service adopts hot restart in this sequence. SIGHUP starts the binary
// at the same path as the next generation, which inherits the listener;
// once it is ready this one drains, runs its cleanup and Run returns.
// SIGTERM stops it the same way.
func Example() {
	run := func(ctx context.Context, db io.Closer) error {
		u, err := upgrade.New(upgrade.Options{Logger: zerolog.New(os.Stderr), Version: "v1.2.3"})
		if err != nil {
			return err
		}
		ln, err := u.Listen(ctx, "tcp", "127.0.0.1:8080")
		if err != nil {
			return err
		}
		u.Serve(ln, upgrade.HTTP(&http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}), nil)
		u.OnCleanup("close database", func(context.Context) error { return db.Close() })
		if err := u.Ready(); err != nil {
			return err
		}
		return u.Run(ctx)
	}
	_ = run // main calls run and exits 1 if it returns an error
}

// The "server in a thread" pattern: a server started inside a program (or
// a test) on an ephemeral port, and stopped from code with Shutdown, which
// waits for the requests in flight.
func Example_inProcess() {
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	started := make(chan struct{})
	u.Serve(ln, upgrade.HTTP(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(100 * time.Millisecond) // work in flight when Shutdown begins
		io.WriteString(w, "finished")
	})}), nil)
	u.Ready()

	answer := make(chan string)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			answer <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answer <- resp.Status + " " + string(b)
	}()
	<-started

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := u.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-answer)
	fmt.Println(u.Status().State, u.Status().LastDrain.Closed.Forced, "forced")
	// Output:
	// 200 OK finished
	// stopped 0 forced
}
