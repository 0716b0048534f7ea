package handlers_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/rs/zerolog"
)

// startInProcess runs the reference server's API inside this process on an
// ephemeral loopback port, the "server in a thread" pattern: a standalone
// Upgrader (no handoff, no signals) serves it until Shutdown.
func startInProcess(log zerolog.Logger) (*upgrade.Upgrader, string, error) {
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true, Logger: log, Version: "in-process"})
	if err != nil {
		return nil, "", err
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	st := u.Status()
	u.Serve(ln, upgrade.HTTP(&http.Server{
		Handler: handlers.New(handlers.Options{
			Info:      handlers.Info{PID: st.PID, Generation: st.Generation, Version: st.Version, StartedAt: st.StartedAt},
			Lifecycle: u,
			Logger:    log,
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}), nil)
	if err := u.Ready(); err != nil {
		return nil, "", err
	}
	return u, "http://" + ln.Addr().String(), nil
}

// Start the reference server in-process, send it requests, and stop it
// with Shutdown: the request in flight when Shutdown is called completes.
func Example_inProcess() {
	u, base, err := startInProcess(zerolog.Nop())
	if err != nil {
		log.Fatal(err)
	}
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
	for u.Status().InFlight == 0 { // wait until the request is being served
		time.Sleep(5 * time.Millisecond)
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

// Every request in flight when Shutdown is called completes with 200, and
// Shutdown returns only after they have.
func TestInProcessShutdownCompletesInFlight(t *testing.T) {
	u, base, err := startInProcess(zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	c := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	results := make(chan error, n)
	finished := make(chan time.Time, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(fmt.Sprintf("%s/slow?ms=%d", base, 500+10*i))
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
	poll(t, 10*time.Second, "all requests in flight", func() error {
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

// poll calls f until it succeeds or timeout passes.
func poll(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
