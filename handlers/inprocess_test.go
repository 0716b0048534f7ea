package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// Run the reference server's API inside this process on an ephemeral
// loopback port, the "server in a thread" pattern: a standalone Upgrader
// (no handoff, no signals) serves it until Shutdown, and the request in
// flight when Shutdown is called completes.
func Example_inProcess() {
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true, Logger: zerolog.Nop(), Version: "in-process"})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	st := u.Status()
	u.Serve(ln, upgrade.HTTP(&http.Server{
		Handler: handlers.New(handlers.Options{
			Info:      handlers.Info{PID: st.PID, Generation: st.Generation, Version: st.Version, StartedAt: st.StartedAt},
			Lifecycle: u,
			Logger:    zerolog.Nop(),
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}), nil)
	if err := u.Ready(); err != nil {
		log.Fatal(err)
	}
	base := "http://" + ln.Addr().String()

	done := make(chan string)
	go func() {
		resp, err := http.Get(base + "/slow?ms=300")
		if err != nil {
			done <- err.Error()
			return
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		done <- resp.Status
	}()
	err = testkit.Wait(10*time.Second, func() error {
		if u.Status().InFlight == 0 {
			return errors.New("the request is not being served yet")
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("in flight at Shutdown:", <-done)
	_, err = http.Get(base + "/")
	fmt.Println("after Shutdown, a new request is refused:", err != nil)
	// Output:
	// in flight at Shutdown: 200 OK
	// after Shutdown, a new request is refused: true
}

// referenceAPI is the reference server's API, served by u.
func referenceAPI(u *upgrade.Upgrader) upgrade.Server {
	st := u.Status()
	return upgrade.HTTP(testkit.HTTPServer(handlers.New(handlers.Options{
		Info:      handlers.Info{PID: st.PID, Generation: st.Generation, Version: st.Version, StartedAt: st.StartedAt},
		Lifecycle: u,
		Logger:    u.Logger(),
	})))
}

// Every request in flight when Shutdown is called completes with 200, and
// Shutdown returns only after they have.
func TestInProcessShutdownCompletesInFlight(t *testing.T) {
	s := testkit.Start(t, upgrade.Options{Version: "in-process"}, referenceAPI)
	u := s.Upgrader
	const n = 20
	c := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	results := make(chan error, n)
	finished := make(chan time.Time, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(s.URL(fmt.Sprintf("/slow?ms=%d", 500+10*i)))
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			finished <- time.Now()
			results <- err
		}()
	}
	testkit.WaitFor(t, 10*time.Second, "all requests in flight", func() error {
		if got := u.Status().InFlight; got != n {
			return fmt.Errorf("%d in flight", got)
		}
		return nil
	})
	if err := u.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	returned := time.Now()
	wg.Wait()
	close(results)
	close(finished)
	for err := range results {
		if err != nil {
			t.Errorf("request in flight at Shutdown: %v, want 200", err)
		}
	}
	for at := range finished {
		if at.After(returned.Add(100 * time.Millisecond)) {
			t.Errorf("a request finished %v after Shutdown returned; Shutdown must wait for it", at.Sub(returned))
		}
	}
	if d := u.Status().LastDrain; d == nil || d.Closed.Forced != 0 || d.ConnectionsAtStart != n {
		t.Errorf("drain record %+v, want %d connections, none forced", d, n)
	}
}
