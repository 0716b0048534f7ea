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
// key-value store (internal/kvgrpc).
func serveGRPC(ctx context.Context, upg *upgrade.Upgrader, addr string, kv kvgrpc.KV, log zerolog.Logger) error {
	ln, err := upg.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	rpcs := upgradegrpc.NewRPCStats()
	gs := grpc.NewServer(grpc.StatsHandler(rpcs), grpc.ForceServerCodecV2(kvgrpc.Codec()))
	hs := health.NewServer()
	// SERVING, qualified at every check by IsReady, as /readyz: false
	// before the first generation is ready and once a stop begins, true
	// across a handoff on either side.
	for _, svc := range []string{"", kvgrpc.ServiceName} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(gs, &grpcHealth{Server: hs, upg: upg})
	kvgrpc.Register(gs, kvgrpc.Options{KV: kv, Draining: upg.Draining(), Logger: log})
	go func() { // ends when the drain begins, or the generation is done without one
		select {
		case <-upg.Draining():
			if !upg.HandedOver() {
				hs.Shutdown() // the service stops: every service NOT_SERVING
			}
		case <-upg.Done():
		}
	}()
	return upg.Serve(ln, upgradegrpc.Server(gs, &upgradegrpc.Options{RPCs: rpcs}), &upgrade.ServeOptions{Name: "grpc"})
}

// grpcHealth is the standard health service, with two changes for a
// server that restarts. Check answers NOT_SERVING whenever /readyz fails:
// before the first generation is ready, and from the start of a stop. Watch streams end when the
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
