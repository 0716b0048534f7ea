package restarttest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
)

// grpcClient sends health checks on a grpc-go ClientConn of its own.
// grpc-go reconnects by itself when the server closes the connection;
// configured retries are disabled, and transparent retries (of RPCs the
// server refused unprocessed), which cannot be, are counted.
type grpcClient struct {
	s      *settings
	conn   *grpc.ClientConn
	health healthpb.HealthClient
}

func newGRPC(s *settings, rec *recorder) (*grpcClient, error) {
	creds := insecure.NewCredentials()
	if s.target.Scheme == "https" {
		conf, err := s.tlsConfig("h2")
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(conf)
	}
	conn, err := grpc.NewClient("passthrough:///"+s.hostport,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialLoopback(ctx, addr)
		}),
		grpc.WithDisableRetry(),
		grpc.WithStatsHandler(retryCounter{&rec.grpcRetries}),
		grpc.WithUserAgent("handoff-check"),
	)
	if err != nil {
		return nil, fmt.Errorf("grpc client for %s: %w", s.hostport, err)
	}
	return &grpcClient{s: s, conn: conn, health: healthpb.NewHealthClient(conn)}, nil
}

func (g *grpcClient) round(kind, []byte) answer {
	ctx, cancel := context.WithTimeout(context.Background(), g.s.RequestTimeout)
	defer cancel()
	var md metadata.MD
	resp, err := g.health.Check(ctx, &healthpb.HealthCheckRequest{Service: g.s.GRPCService}, grpc.Header(&md))
	if err != nil {
		return answer{err: err, outcome: classifyGRPC(err)}
	}
	a := answer{status: 200}
	if g.s.GenHeader != "" {
		if v := md.Get(strings.ToLower(g.s.GenHeader)); len(v) > 0 {
			a.gen = v[0]
		}
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		a.outcome, a.detail = NotServing, "health status "+st.String()
	}
	return a
}

func (g *grpcClient) close() { g.conn.Close() }

// retryCounter counts the attempts grpc-go makes on its own.
type retryCounter struct{ n *atomic.Int64 }

func (r retryCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (r retryCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if b, ok := s.(*stats.Begin); ok && b.IsTransparentRetryAttempt {
		r.n.Add(1)
	}
}
func (r retryCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (r retryCounter) HandleConn(context.Context, stats.ConnStats)                       {}
