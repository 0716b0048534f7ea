package upgradegrpc_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/handoff-go/handoff/upgrade"
	"github.com/handoff-go/handoff/upgrade/upgradegrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A gRPC service under upgrade: the standard health service answers
// SERVING until the drain begins and NOT_SERVING from then on, and the
// drain ends the client's connection with GOAWAY. Here the server runs
// standalone and is stopped from code; a real service calls Run and
// restarts on SIGHUP the same way.
func Example() {
	u, err := upgrade.New(upgrade.Options{Standalone: true, IgnoreSignals: true})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	rpcs := upgradegrpc.NewRPCStats()
	gs := grpc.NewServer(grpc.StatsHandler(rpcs))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go func() { // ends when the drain begins
		<-u.Draining()
		hs.Shutdown() // NOT_SERVING: load balancers send new RPCs elsewhere
	}()
	if err := u.Serve(ln, upgradegrpc.Server(gs, &upgradegrpc.Options{RPCs: rpcs}), &upgrade.ServeOptions{Name: "grpc"}); err != nil {
		log.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		log.Fatal(err)
	}

	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetStatus())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	st := u.Status()
	fmt.Printf("RPCs served: %d; connections closed after GOAWAY: %d, forced: %d\n",
		st.Servers[0].Requests, st.LastDrain.Closed.HTTP2, st.LastDrain.Closed.Forced)
	// Output:
	// SERVING
	// RPCs served: 1; connections closed after GOAWAY: 1, forced: 0
}
