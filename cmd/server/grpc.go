package main

import (
	"context"
	"fmt"

	"github.com/handoff-go/handoff/internal/kvgrpc"
	"github.com/handoff-go/handoff/upgrade"
	"github.com/handoff-go/handoff/upgrade/upgradegrpc"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// serveGRPC serves gRPC on addr: the standard health service and the
// key-value store (internal/kvgrpc). It returns the function to call once
// the generation is ready, which turns the health status to SERVING.
func serveGRPC(ctx context.Context, upg *upgrade.Upgrader, addr string, kv kvgrpc.KV, log zerolog.Logger) (ready func(), err error) {
	ln, err := upg.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("grpc listener: %w", err)
	}
	rpcs := upgradegrpc.NewRPCStats()
	gs := grpc.NewServer(grpc.StatsHandler(rpcs), grpc.ForceServerCodecV2(kvgrpc.Codec()))
	hs := health.NewServer()
	// NOT_SERVING until ready, as /readyz: a new generation shares the
	// socket with the old one while it starts.
	for _, svc := range []string{"", kvgrpc.ServiceName} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(gs, &grpcHealth{Server: hs, upg: upg})
	kvgrpc.Register(gs, kvgrpc.Options{KV: kv, Draining: upg.Draining(), Logger: log})
	go func() { // ends when the drain begins, or the generation is done without one
		select {
		case <-upg.Draining():
			hs.Shutdown() // every service NOT_SERVING
		case <-upg.Done():
		}
	}()
	if err := upg.Serve(ln, upgradegrpc.Server(gs, &upgradegrpc.Options{RPCs: rpcs}), &upgrade.ServeOptions{Name: "grpc"}); err != nil {
		return nil, err
	}
	return func() {
		for _, svc := range []string{"", kvgrpc.ServiceName} {
			hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
		}
	}, nil
}

// grpcHealth is the standard health service, with two changes for a
// server that restarts. Check answers NOT_SERVING whenever /readyz fails,
// so also while a stop's shutdown delay runs. Watch streams end when the
// drain begins, since the drain waits for every RPC: the client watches
// again and reaches the next generation.
type grpcHealth struct {
	*health.Server
	upg *upgrade.Upgrader
}

func (h *grpcHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	resp, err := h.Server.Check(ctx, req)
	if err == nil && !h.upg.IsReady() {
		resp.Status = healthpb.HealthCheckResponse_NOT_SERVING
	}
	return resp, err
}

func (h *grpcHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() { // ends when the drain begins or the watch ends
		select {
		case <-h.upg.Draining():
			cancel()
		case <-ctx.Done():
		}
	}()
	err := h.Server.Watch(req, &watchStream{Health_WatchServer: stream, ctx: ctx})
	if stream.Context().Err() == nil && ctx.Err() != nil {
		return status.Error(codes.Unavailable, "server draining for a restart: watch again")
	}
	return err
}

// watchStream is a health watch stream whose context also ends when the
// drain begins.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w *watchStream) Context() context.Context { return w.ctx }
