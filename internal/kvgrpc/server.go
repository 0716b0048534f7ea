// Package kvgrpc serves the reference server's key-value store over gRPC,
// as the service handoff.kv.v1.KV of kv.proto, and is its Go client.
//
// The service is written by hand (a grpc.ServiceDesc and messages encoded
// in wire.go), since the module has no protoc. A grpc.Server that
// registers it must be created with grpc.ForceServerCodecV2(Codec()); the
// codec hands every other message to grpc's protobuf codec, so other
// services on the same server are not affected.
//
// Watch follows the store's state by reading the watched prefix every
// PollInterval (List, then Get of each key), not by a notification from
// the store. During a handoff two generations of the server write to the
// same database, so only the database sees every change: a hook in one
// process would miss the other's writes. Reading costs a List and a Get
// per key per watch per interval, which is why a watch is bounded
// (MaxWatchKeys, MaxWatchBytes).
package kvgrpc

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/handoff-go/handoff/handlers"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// ServiceName is the gRPC name of the service.
const ServiceName = "handoff.kv.v1.KV"

// Limits of Watch.
const (
	// DefaultPollInterval is how often a watch reads its prefix when
	// Options.PollInterval is zero.
	DefaultPollInterval = 100 * time.Millisecond
	// MaxWatchKeys is the most keys a watched prefix may hold.
	MaxWatchKeys = 1000
	// MaxWatchBytes bounds the values of a watched prefix, so that a
	// snapshot fits in a gRPC client's default 4 MiB message limit.
	MaxWatchBytes = 2 << 20
)

// KV is the store the service serves: handlers.KV's contract (keys are
// valid, a Put or Delete returns once durable; errors wrapping
// handlers.ErrUnavailable are transient).
type KV interface {
	Get(ctx context.Context, key string) (value []byte, ok bool, err error)
	Put(ctx context.Context, key string, value []byte) (created bool, err error)
	Delete(ctx context.Context, key string) (existed bool, err error)
	List(ctx context.Context, prefix, after string, limit int) (keys []string, next string, err error)
}

// Options are the service's dependencies.
type Options struct {
	KV KV
	// Draining is closed when this generation begins to drain: every
	// Watch then ends with codes.Unavailable, which tells its client to
	// watch again, and the next generation answers. Nil means watches end
	// only when their clients leave, which would hold a graceful drain
	// until its deadline.
	Draining <-chan struct{}
	// PollInterval is how often a watch reads its prefix. Zero means
	// DefaultPollInterval.
	PollInterval time.Duration
	Logger       zerolog.Logger
}

// service is the implementation behind the ServiceDesc.
type service struct {
	kv       KV
	draining <-chan struct{}
	poll     time.Duration
	log      zerolog.Logger
}

// Register registers the service on s.
func Register(s grpc.ServiceRegistrar, o Options) {
	svc := &service{kv: o.KV, draining: o.Draining, poll: o.PollInterval, log: o.Logger}
	if svc.poll <= 0 {
		svc.poll = DefaultPollInterval
	}
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			unary("Get", (*service).get),
			unary("Put", (*service).put),
			unary("Delete", (*service).delete),
		},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Watch",
			ServerStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				req := new(WatchRequest)
				if err := stream.RecvMsg(req); err != nil {
					return err
				}
				return srv.(*service).watch(req, stream)
			},
		}},
		Metadata: "kv.proto",
	}, svc)
}

// unary is the MethodDesc of a unary method, as protoc-gen-go-grpc would
// generate it.
func unary[Req, Resp any](name string, call func(*service, context.Context, *Req) (*Resp, error)) grpc.MethodDesc {
	full := "/" + ServiceName + "/" + name
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			req := new(Req)
			if err := dec(req); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) { return call(srv.(*service), ctx, req.(*Req)) }
			if icpt == nil {
				return h(ctx, req)
			}
			return icpt(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, h)
		},
	}
}

func (s *service) get(ctx context.Context, req *Key) (*Entry, error) {
	if err := checkKey("key", req.Key); err != nil {
		return nil, err
	}
	v, ok, err := s.kv.Get(ctx, req.Key)
	if err != nil {
		return nil, s.failed(ctx, "get", err)
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "key %q not found", req.Key)
	}
	return &Entry{Key: req.Key, Value: v}, nil
}

func (s *service) put(ctx context.Context, req *Entry) (*PutResult, error) {
	if err := checkKey("key", req.Key); err != nil {
		return nil, err
	}
	if req.Deleted {
		return nil, status.Error(codes.InvalidArgument, "deleted is set: call Delete to remove a key")
	}
	if len(req.Value) > handlers.MaxValueSize {
		return nil, status.Errorf(codes.InvalidArgument, "value is %d bytes long; send at most %d", len(req.Value), handlers.MaxValueSize)
	}
	created, err := s.kv.Put(ctx, req.Key, req.Value)
	if err != nil {
		return nil, s.failed(ctx, "put", err)
	}
	return &PutResult{Created: created}, nil
}

func (s *service) delete(ctx context.Context, req *Key) (*emptypb.Empty, error) {
	if err := checkKey("key", req.Key); err != nil {
		return nil, err
	}
	existed, err := s.kv.Delete(ctx, req.Key)
	if err != nil {
		return nil, s.failed(ctx, "delete", err)
	}
	if !existed {
		return nil, status.Errorf(codes.NotFound, "key %q not found", req.Key)
	}
	return &emptypb.Empty{}, nil
}

// watch sends the prefix's state, then its changes every poll interval,
// until the client leaves or the drain begins.
func (s *service) watch(req *WatchRequest, stream grpc.ServerStream) error {
	if req.Prefix != "" {
		if err := checkKey("prefix", req.Prefix); err != nil {
			return err
		}
	}
	ctx := stream.Context()
	cur, err := s.read(ctx, req.Prefix)
	if err != nil {
		return err
	}
	ev := &WatchEvent{Revision: Revision(cur)}
	if req.Revision != ev.Revision {
		ev.Snapshot = true
		ev.Entries = changes(nil, cur)
	}
	if err := stream.SendMsg(ev); err != nil {
		return err
	}
	rev := ev.Revision
	tick := time.NewTicker(s.poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.draining:
			return status.Errorf(codes.Unavailable,
				"server draining for a restart: call Watch again with revision %s to resume", rev)
		case <-tick.C:
		}
		next, err := s.read(ctx, req.Prefix)
		if status.Code(err) == codes.Unavailable {
			continue // the store is busy; the next poll sees what this one missed
		}
		if err != nil {
			return err
		}
		diff := changes(cur, next)
		if len(diff) == 0 {
			continue
		}
		rev = Revision(next)
		if err := stream.SendMsg(&WatchEvent{Entries: diff, Revision: rev}); err != nil {
			return err
		}
		cur = next
	}
}

// read returns every key under prefix with its value.
func (s *service) read(ctx context.Context, prefix string) (map[string][]byte, error) {
	var keys []string
	for after := ""; ; {
		page, next, err := s.kv.List(ctx, prefix, after, handlers.MaxListLimit)
		if err != nil {
			return nil, s.failed(ctx, "list", err)
		}
		keys = append(keys, page...)
		if len(keys) > MaxWatchKeys {
			return nil, status.Errorf(codes.FailedPrecondition,
				"prefix %q holds more than %d keys; watch a longer prefix", prefix, MaxWatchKeys)
		}
		if next == "" {
			break
		}
		after = next
	}
	entries := make(map[string][]byte, len(keys))
	size := 0
	for _, k := range keys {
		v, ok, err := s.kv.Get(ctx, k)
		if err != nil {
			return nil, s.failed(ctx, "get", err)
		}
		if !ok {
			continue // deleted since List
		}
		if size += len(v); size > MaxWatchBytes {
			return nil, status.Errorf(codes.FailedPrecondition,
				"the values under prefix %q add up to more than %d bytes; watch a longer prefix", prefix, MaxWatchBytes)
		}
		entries[k] = v
	}
	return entries, nil
}

// changes returns what turns from into to, in key order: an entry for
// every key added or changed, and a deleted one for every key removed.
func changes(from, to map[string][]byte) []Entry {
	var out []Entry
	for k, v := range to {
		if old, ok := from[k]; !ok || string(old) != string(v) {
			out = append(out, Entry{Key: k, Value: v})
		}
	}
	for k := range from {
		if _, ok := to[k]; !ok {
			out = append(out, Entry{Key: k, Deleted: true})
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// failed turns a store error into a status without its details, which
// are logged.
func (s *service) failed(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	// Transient, as handlers.ErrUnavailable's contract says: an error in
	// the chain with Unavailable() true (the store's busy database).
	var u interface{ Unavailable() bool }
	if (errors.As(err, &u) && u.Unavailable()) || errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn().Err(err).Str("op", op).Msg("kv store unavailable")
		return status.Error(codes.Unavailable, "key-value store is busy; retry in a moment")
	}
	s.log.Error().Err(err).Str("op", op).Msg("kv store failed")
	return status.Error(codes.Internal, "key-value store failed; the server log has the cause")
}

// checkKey answers InvalidArgument for a key the store does not take, as
// the HTTP handlers do: empty, longer than handlers.MaxKeyLen bytes, or
// with a control character. (The codec has already checked that it is
// valid UTF-8.)
func checkKey(name, key string) error {
	if key == "" {
		return status.Errorf(codes.InvalidArgument, "%s is empty", name)
	}
	if len(key) > handlers.MaxKeyLen {
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long; use at most %d", name, len(key), handlers.MaxKeyLen)
	}
	for i, c := range key {
		if unicode.IsControl(c) {
			return status.Errorf(codes.InvalidArgument, "%s has character %U at byte %d; use text without control characters", name, c, i)
		}
	}
	return nil
}

// Compile-time checks that the messages the service exchanges are ones
// the codec encodes.
var (
	_ message = (*Key)(nil)
	_ message = (*Entry)(nil)
	_ message = (*PutResult)(nil)
	_ message = (*WatchRequest)(nil)
	_ message = (*WatchEvent)(nil)
)
