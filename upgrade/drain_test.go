package upgrade_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
)

// shutdownAsync starts a graceful stop and returns its result channel, once
// the drain has begun.
func shutdownAsync(t *testing.T, s *testkit.Server) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- s.Upgrader.Shutdown(ctx)
	}()
	select {
	case <-s.Upgrader.Draining():
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not begin within 10s of Shutdown")
	}
	return done
}

func lastDrain(t *testing.T, s *testkit.Server, done <-chan error) upgrade.DrainRecord {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not return within 30s")
	}
	st := s.Upgrader.Status()
	if st.LastDrain == nil {
		t.Fatal("status has no drain record after Shutdown")
	}
	return *st.LastDrain
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
}

// Regression: http.Server.Shutdown closes an idle keep-alive connection at
// once, so a request the client writes at that moment is lost. The drain
// answers it instead, with Connection: close.
func TestDrainAnswersRecentlyIdleConnection(t *testing.T) {
	s := testkit.StartHTTP(t, upgrade.Options{IdleGrace: 5 * time.Second}, okHandler())
	c := testkit.Dial(t, s.Addr)
	if resp, _, err := c.Get("/"); err != nil || resp.Close {
		t.Fatalf("first request: close %v, error %v; want a kept-alive answer", resp != nil && resp.Close, err)
	}

	done := shutdownAsync(t, s)
	resp, _, err := c.Get("/")
	if err != nil {
		t.Fatalf("request on a connection idle for less than the grace period, during the drain: %v", err)
	}
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("request during drain: status %d, Connection: close %v; want 200 and true", resp.StatusCode, resp.Close)
	}
	if _, err := c.Reader.ReadByte(); err != io.EOF {
		t.Errorf("read after the last answer: %v, want EOF (the server closes the connection)", err)
	}
	d := lastDrain(t, s, done)
	if d.Closed.AfterResponse != 1 || d.Closed.Total() != 1 {
		t.Errorf("drain closes = %+v, want one after_response", d.Closed)
	}
	if d.ConnectionsAtStart != 1 || d.RequestsWhileDraining != 1 {
		t.Errorf("drain: %d connections at start, %d requests while draining; want 1 and 1", d.ConnectionsAtStart, d.RequestsWhileDraining)
	}
}

// A connection idle for longer than the grace period is half-closed: the
// client reads EOF, never a reset.
func TestDrainHalfClosesLongIdleConnection(t *testing.T) {
	s := testkit.StartHTTP(t, upgrade.Options{IdleGrace: 50 * time.Millisecond, CloseSpread: time.Millisecond}, okHandler())
	c := testkit.Dial(t, s.Addr)
	if _, _, err := c.Get("/"); err != nil {
		t.Fatal(err)
	}
	done := shutdownAsync(t, s)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Reader.ReadByte(); err != io.EOF {
		t.Fatalf("read on an idle connection during the drain: %v, want EOF", err)
	}
	c.Close()
	d := lastDrain(t, s, done)
	if d.Closed.Idle != 1 || d.Closed.Total() != 1 {
		t.Errorf("drain closes = %+v, want one idle", d.Closed)
	}
}

// Idle connections are closed at moments spread over CloseSpread, not all
// at once.
func TestDrainSpreadsIdleCloses(t *testing.T) {
	const n = 20
	spread := 400 * time.Millisecond
	s := testkit.StartHTTP(t, upgrade.Options{IdleGrace: time.Millisecond, CloseSpread: spread}, okHandler())
	conns := make([]*testkit.Conn, n)
	for i := range conns {
		conns[i] = testkit.Dial(t, s.Addr)
		if _, _, err := conns[i].Get("/"); err != nil {
			t.Fatal(err)
		}
	}
	done := shutdownAsync(t, s)
	var mu sync.Mutex
	var first, last time.Time
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := c.Reader.ReadByte()
			at := time.Now()
			c.Close()
			if err != io.EOF {
				t.Errorf("idle connection during drain: %v, want EOF", err)
			}
			mu.Lock()
			if first.IsZero() || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	d := lastDrain(t, s, done)
	if d.Closed.Idle != n {
		t.Errorf("drain closed %d idle connections, want %d", d.Closed.Idle, n)
	}
	if got := last.Sub(first); got < spread/4 {
		t.Errorf("%d idle closes spanned %v, want them spread over about %v", n, got, spread)
	}
}

// A request in flight when the drain begins completes, and its answer ends
// the connection.
func TestDrainCompletesInFlightRequest(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		fmt.Fprint(w, "done")
	})
	s := testkit.StartHTTP(t, upgrade.Options{}, h)
	c := testkit.Dial(t, s.Addr)
	got := make(chan error, 1)
	var resp *http.Response
	go func() {
		var err error
		resp, _, err = c.Get("/")
		got <- err
	}()
	<-entered
	done := shutdownAsync(t, s)
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("request in flight across the drain: %v", err)
	}
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("in-flight request: status %d, Connection: close %v; want 200 and true", resp.StatusCode, resp.Close)
	}
	d := lastDrain(t, s, done)
	if d.Closed.AfterResponse != 1 || d.Closed.Forced != 0 {
		t.Errorf("drain closes = %+v, want one after_response and none forced", d.Closed)
	}
}

// What is still open at the drain deadline is force-closed and counted.
func TestDrainForcesAtDeadline(t *testing.T) {
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done() // never answers
	})
	s := testkit.StartHTTP(t, upgrade.Options{DrainTimeout: 200 * time.Millisecond}, h)
	c := testkit.Dial(t, s.Addr)
	got := make(chan error, 1)
	go func() {
		_, _, err := c.Get("/")
		got <- err
	}()
	<-entered
	done := shutdownAsync(t, s)
	d := lastDrain(t, s, done)
	if d.Closed.Forced != 1 {
		t.Errorf("drain closes = %+v, want one forced", d.Closed)
	}
	if err := <-got; err == nil {
		t.Error("request that never answered: got a response, want an error after the force-close")
	}
}

// HTTP/2 clients get GOAWAY and finish their streams.
func TestDrainHTTP2(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			entered <- struct{}{}
			<-release
		}
		fmt.Fprint(w, r.Proto)
	})
	s := testkit.StartHTTP(t, upgrade.Options{}, h)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
	resp, err := c.Get(s.URL("/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("protocol = %s, want HTTP/2", resp.Proto)
	}
	got := make(chan error, 1)
	go func() {
		resp, err := c.Get(s.URL("/wait"))
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		got <- err
	}()
	<-entered
	done := shutdownAsync(t, s)
	close(release)
	if err := <-got; err != nil {
		t.Errorf("HTTP/2 stream in flight across the drain: %v", err)
	}
	d := lastDrain(t, s, done)
	if d.Closed.HTTP2 != 1 || d.Closed.Total() != 1 {
		t.Errorf("drain closes = %+v, want one http2", d.Closed)
	}
}

// During the shutdown delay the generation reports not ready but still
// accepts and answers; the drain begins after it.
func TestShutdownDelayKeepsServing(t *testing.T) {
	delay := 500 * time.Millisecond
	s := testkit.StartHTTP(t, upgrade.Options{ShutdownDelay: delay}, okHandler())
	if !s.Upgrader.IsReady() {
		t.Fatal("IsReady before stop = false, want true")
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Upgrader.Shutdown(context.Background()) }()
	testkit.WaitFor(t, 5*time.Second, "IsReady after stop", func() error {
		if s.Upgrader.IsReady() {
			return errors.New("still ready")
		}
		return nil
	})
	resp, _, err := testkit.Dial(t, s.Addr).Get("/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("new connection during the shutdown delay: %v", err)
	}
	select {
	case <-s.Upgrader.Draining():
		if time.Since(start) < delay {
			t.Errorf("drain began %v after stop, before the %v delay", time.Since(start), delay)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not begin")
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// Cleanup hooks run after the drain, last registered first, each bounded:
// a hook that hangs or fails does not stop the next.
func TestCleanupOrderAndBounds(t *testing.T) {
	var mu sync.Mutex
	var order []string
	note := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	s := testkit.Start(t, upgrade.Options{CleanupTimeout: 100 * time.Millisecond}, func(u *upgrade.Upgrader) upgrade.Server {
		u.OnCleanup("close database", func(ctx context.Context) error { note("database"); return nil })
		u.OnCleanup("hangs", func(ctx context.Context) error { note("hangs"); select {} })
		u.OnCleanup("fails", func(ctx context.Context) error { note("fails"); return errors.New("disk full") })
		u.OnCleanup("persist cache", func(ctx context.Context) error {
			select {
			case <-u.Draining():
				note("cache")
			default:
				note("cache before drain")
			}
			return nil
		})
		return upgrade.HTTP(testkit.HTTPServer(okHandler()))
	})
	if err := s.Upgrader.OnCleanup("late", func(context.Context) error { return nil }); err == nil {
		t.Error("OnCleanup after Ready: err = nil, want an error")
	}
	if _, err := s.Upgrader.Listen(t.Context(), "tcp", "127.0.0.1:0"); err == nil {
		t.Error("Listen after Ready: err = nil, want an error")
	}
	if err := s.Upgrader.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"cache", "fails", "hangs", "database"}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("cleanup order = %v, want %v", order, want)
	}
}

// A second stop signal makes Run return ErrForced at once, while the first
// stop is still draining.
func TestSecondSignalForcesExit(t *testing.T) {
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	u, err := upgrade.New(upgrade.Options{
		Standalone: true, DrainTimeout: time.Minute,
		Logger: testkit.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := u.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	u.Serve(ln, upgrade.HTTP(srv), nil)
	u.Ready()
	runErr := make(chan error, 1)
	go func() { runErr <- u.Run(context.Background()) }()
	t.Cleanup(func() { srv.Close() })

	go http.Get("http://" + ln.Addr().String() + "/")
	<-entered
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	select {
	case <-u.Draining():
	case <-time.After(10 * time.Second):
		t.Fatal("first SIGTERM did not start the drain")
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	select {
	case err := <-runErr:
		if !errors.Is(err, upgrade.ErrForced) {
			t.Errorf("Run after a second SIGTERM = %v, want ErrForced", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after a second SIGTERM")
	}
}

func TestStandaloneRefusesUpgrade(t *testing.T) {
	s := testkit.StartHTTP(t, upgrade.Options{}, okHandler())
	if _, err := s.Upgrader.Upgrade(t.Context()); !errors.Is(err, upgrade.ErrStandalone) {
		t.Errorf("Upgrade in standalone mode = %v, want ErrStandalone", err)
	}
}
