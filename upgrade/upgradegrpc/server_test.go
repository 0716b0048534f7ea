package upgradegrpc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/handoff-go/handoff/upgrade/upgradegrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serve runs gs under a standalone Upgrader and returns it with the
// listener's address.
func serve(t *testing.T, gs *grpc.Server, rpcs *upgradegrpc.RPCStats, drain time.Duration) (*upgrade.Upgrader, string) {
	t.Helper()
	s := testkit.Start(t, upgrade.Options{DrainTimeout: drain}, func(*upgrade.Upgrader) upgrade.Server {
		return upgradegrpc.Server(gs, &upgradegrpc.Options{RPCs: rpcs})
	})
	return s.Upgrader, s.Addr
}

func dial(t *testing.T, addr string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

func shutdown(t *testing.T, u *upgrade.Upgrader) upgrade.CloseCounts {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := u.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	return u.Status().LastDrain.Closed
}

// An RPC in flight when the drain begins is served, and its connection
// then closes gracefully.
func TestDrainServesRPCInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	slow := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		close(entered)
		<-release
		return h(ctx, req)
	}
	rpcs := upgradegrpc.NewRPCStats()
	gs := grpc.NewServer(grpc.StatsHandler(rpcs), grpc.UnaryInterceptor(slow))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	u, addr := serve(t, gs, rpcs, 30*time.Second)
	c := dial(t, addr)

	errc := make(chan error, 1)
	go func() {
		_, err := c.Check(context.Background(), &healthpb.HealthCheckRequest{})
		errc <- err
	}()
	<-entered
	if st := u.Status(); st.InFlight != 1 || st.Connections != 1 {
		t.Errorf("status with one RPC in flight: in_flight %d, connections %d; want 1, 1", st.InFlight, st.Connections)
	}
	go func() { // ends when the drain has begun
		<-u.Draining()
		close(release)
	}()
	closed := shutdown(t, u)
	if err := <-errc; err != nil {
		t.Errorf("Check in flight at the drain: %v, want success", err)
	}
	if closed.HTTP2 != 1 || closed.Forced != 0 {
		t.Errorf("drain closed %d gracefully and %d forced, want 1 and 0", closed.HTTP2, closed.Forced)
	}
}

// A stream that outlives the drain deadline is cut and counted as forced,
// and the drain returns at its deadline.
func TestDrainForcesAtDeadline(t *testing.T) {
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	u, addr := serve(t, gs, nil, 300*time.Millisecond)
	w, err := dial(t, addr).Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil { // the stream is open on the server
		t.Fatal(err)
	}
	closed := shutdown(t, u)
	if closed.Forced != 1 || closed.HTTP2 != 0 {
		t.Errorf("drain with a never-ending watch: %d forced, %d graceful; want 1, 0", closed.Forced, closed.HTTP2)
	}
	if _, err := w.Recv(); err == nil {
		t.Error("watch still open after a forced drain")
	}
}

// Regression: a client that connects and sends nothing keeps grpc-go's
// GracefulStop, and Stop too, waiting for the connection timeout (120 s),
// so the drain must close such connections itself at its deadline.
func TestDrainForcesSilentConnection(t *testing.T) {
	gs := grpc.NewServer()
	u, addr := serve(t, gs, nil, 300*time.Millisecond)
	testkit.Dial(t, addr)
	testkit.WaitFor(t, 10*time.Second, "the silent connection to be accepted", func() error {
		if n := u.Status().Connections; n != 1 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})

	done := make(chan upgrade.CloseCounts, 1)
	go func() { done <- shutdown(t, u) }()
	select {
	case closed := <-done:
		if closed.Forced != 1 {
			t.Errorf("drain with a silent connection: %d forced, want 1", closed.Forced)
		}
	case <-time.After(time.Minute):
		t.Fatal("drain still waiting for a silent connection a minute after its 300ms deadline")
	}
}
