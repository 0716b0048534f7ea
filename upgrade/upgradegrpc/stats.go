package upgradegrpc

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc/stats"
)

// RPCStats counts the RPCs of a grpc.Server for upgrade's Status. It is a
// grpc stats.Handler: create the server with grpc.StatsHandler(rpcs) and
// pass rpcs in Options.RPCs. Use one RPCStats per grpc.Server.
type RPCStats struct {
	started  atomic.Int64
	inFlight atomic.Int64
}

// NewRPCStats returns an RPCStats that has counted nothing.
func NewRPCStats() *RPCStats { return &RPCStats{} }

var _ stats.Handler = (*RPCStats)(nil)

// HandleRPC counts an RPC when it begins and when it ends.
func (r *RPCStats) HandleRPC(_ context.Context, s stats.RPCStats) {
	if s.IsClient() {
		return
	}
	switch s.(type) {
	case *stats.Begin:
		r.started.Add(1)
		r.inFlight.Add(1)
	case *stats.End:
		r.inFlight.Add(-1)
	}
}

// TagRPC returns ctx.
func (r *RPCStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// TagConn returns ctx.
func (r *RPCStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

// HandleConn does nothing: the Server counts connections itself.
func (r *RPCStats) HandleConn(context.Context, stats.ConnStats) {}
