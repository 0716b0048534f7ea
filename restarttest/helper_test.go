package restarttest_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// helperEnv makes the test binary a server instead of running tests, as
// os/exec's TestHelperProcess does: tableflip re-executes os.Args[0] with
// the same environment, so every generation is a server too.
const (
	helperEnv = "RESTARTTEST_HELPER"
	genEnv    = "RESTARTTEST_HELPER_GENERATION"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "grpc":
		if err := grpcServer(os.Getenv("RESTARTTEST_HELPER_ADDR")); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "http":
		if err := httpServer(os.Getenv("RESTARTTEST_HELPER_ADDR")); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// helperGeneration is this process's generation, and sets its successor's.
func helperGeneration() string {
	gen, _ := strconv.Atoi(os.Getenv(genEnv))
	gen = max(gen, 1)
	os.Setenv(genEnv, strconv.Itoa(gen+1)) // read by the next Upgrade
	return strconv.Itoa(gen)
}

// grpcServer is a hot-restarting gRPC health server: tableflip hands the
// listener over on SIGHUP, and the old generation stops with grpc-go's
// GracefulStop (the two-step GOAWAY), bounded.
func grpcServer(addr string) error {
	gen, upg, ln, err := listen(addr)
	if err != nil {
		return err
	}
	defer upg.Stop()
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		grpc.SetHeader(ctx, metadata.Pairs("x-generation", gen))
		return h(ctx, req)
	}))
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln) // returns once the server stops
	if err := upg.Ready(); err != nil {
		return err
	}
	<-upg.Exit()
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }() // ends when every RPC has
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	return nil
}

// httpServer is the tableflip README's server: a plain Shutdown after the
// handoff, which closes idle keep-alive connections at once.
func httpServer(addr string) error {
	gen, upg, ln, err := listen(addr)
	if err != nil {
		return err
	}
	defer upg.Stop()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Generation", gen)
		if r.Method == "POST" {
			// Read it all first: net/http's HTTP/1 server stops reading a
			// body once the response has begun.
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Write(b)
			return
		}
		w.Write([]byte("hello\n"))
	})}
	go srv.Serve(ln)
	if err := upg.Ready(); err != nil {
		return err
	}
	<-upg.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// listen is how every helper server starts: it learns its generation,
// upgrades on SIGHUP, and listens on addr (inherited after an upgrade).
// The caller stops upg.
func listen(addr string) (gen string, upg *tableflip.Upgrader, ln net.Listener, err error) {
	gen = helperGeneration()
	if upg, err = tableflip.New(tableflip.Options{}); err != nil {
		return "", nil, nil, err
	}
	upgradeOnHUP(upg)
	if ln, err = upg.Listen("tcp", addr); err != nil {
		upg.Stop()
		return "", nil, nil, err
	}
	return gen, upg, ln, nil
}

// upgradeOnHUP upgrades on SIGHUP. It sets up the signal before it
// returns: a SIGHUP that came before would kill the process.
func upgradeOnHUP(upg *tableflip.Upgrader) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	go func() { // exits with the process
		for range sig {
			// tableflip refuses to upgrade until it has seen its parent
			// exit, which it learns a moment after the parent is gone.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			upg.WaitForParent(ctx)
			cancel()
			if err := upg.Upgrade(); err != nil {
				fmt.Fprintln(os.Stderr, "helper: upgrade:", err)
			}
		}
	}()
}
