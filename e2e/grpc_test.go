package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/kvgrpc"
	"github.com/handoff-go/handoff/internal/testkit"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// grpcUpgrades is how many times the gRPC test upgrades under load.
const grpcUpgrades = 20

// The gRPC loss test: 16 clients of grpc-go make unary calls (a health
// check, then a Put and a Get of their own key, the value checked) and 4
// watch a prefix that a writer keeps changing, while the server goes
// through grpcUpgrades upgrades. Zero RPCs may fail; every watch must end
// at each drain, resume, and end up with the store's state, which it
// checks at every event (each carries a digest of the state).
//
// The second run disables retries (grpc.WithDisableRetry). grpc-go still
// retries, transparently, an RPC the server refused unprocessed (a stream
// above a GOAWAY's last stream id, or one that never left the client): no
// option turns that off. A client stats handler counts those attempts, and
// the test logs them.
func TestGRPCUnderRestarts(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []grpc.DialOption
	}{
		{"default", nil},
		{"retry-disabled", []grpc.DialOption{grpc.WithDisableRetry()}},
	} {
		t.Run(tc.name, func(t *testing.T) { testGRPCUnderRestarts(t, tc.opts) })
	}
}

func testGRPCUnderRestarts(t *testing.T, dialOpts []grpc.DialOption) {
	gaddr := testkit.FreeAddr(t)
	s := start(t, startOptions{args: []string{"-grpc-addr", gaddr}})
	pid := s.waitReady(1)

	retries := &retryCounter{}
	dial := func() (*grpc.ClientConn, error) {
		opts := append([]grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithStatsHandler(retries),
		}, dialOpts...)
		return grpc.NewClient(gaddr, opts...)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	tl := newTally()
	var wg sync.WaitGroup
	// Clients 0-11 keep one connection; 12-15 make a new one every few
	// calls, so that connections also open while a generation drains.
	var notServing atomic.Int64
	spawn(&wg, 16, func(i int) { grpcUnaryClient(ctx, dial, tl, i, i >= 12, &notServing) })
	const prefix = "watch/"
	w := &grpcWriter{prefix: prefix, state: map[string][]byte{}, halt: make(chan struct{}), halted: make(chan struct{})}
	spawn(&wg, 1, func(int) { w.run(ctx, dial, tl) })
	watchers := make([]*grpcWatcher, 4)
	for i := range watchers {
		watchers[i] = &grpcWatcher{prefix: prefix}
	}
	spawn(&wg, len(watchers), func(i int) { watchers[i].run(ctx, dial, tl) })

	kinds := []string{"grpc-health", "grpc-kv", "grpc-writer", "grpc-watch"}
	waitAllKinds(t, tl, "every gRPC client kind served before the upgrades", kinds...)
	for g := 2; g <= grpcUpgrades+1; g++ {
		pid = s.upgrade(pid, g)
	}
	waitAllKinds(t, tl, "every gRPC client kind served by the last generation", kinds...)

	// The writer stops; every watcher must come to the store's state.
	final := w.stop()
	for i, wt := range watchers {
		testkit.WaitFor(t, time.Minute, fmt.Sprintf("watcher %d to see the final state", i), func() error {
			if got := wt.entries(); !maps.EqualFunc(got, final, bytes.Equal) {
				return fmt.Errorf("watcher has %d keys, store %d: %s", len(got), len(final), diffState(got, final))
			}
			return nil
		})
	}
	cancel()
	wg.Wait()

	t.Logf("after %d upgrades:\n%s", grpcUpgrades, tl)
	t.Logf("health checks answered NOT_SERVING (a generation starting or draining): %d", notServing.Load())
	t.Logf("RPC attempts grpc-go retried transparently: %d", retries.n.Load())
	for _, e := range tl.examples {
		t.Log("failure:", e)
	}
	if n := tl.failures(); n > 0 {
		t.Errorf("%d gRPC calls failed across %d upgrades, want 0", n, grpcUpgrades)
	}
	for i, wt := range watchers {
		if n := wt.resumes.Load(); n < grpcUpgrades {
			t.Errorf("watcher %d resumed %d times across %d upgrades; each drain should end its watch", i, n, grpcUpgrades)
		}
	}
	for _, d := range s.logs.Find(func(l testkit.LogLine) bool { return l.Msg() == "drain finished" && l.Str("reason") == "handoff" }) {
		if d.Int("force_closed") != 0 {
			t.Errorf("generation %d force-closed %d connections", d.Int("generation"), d.Int("force_closed"))
		}
		if d.Int("generation") == grpcUpgrades/2 {
			t.Logf("drain of generation %d: %s", grpcUpgrades/2, d.Raw)
		}
	}
}

// rpcTimeout bounds every gRPC call of the test: a hung call is a failure.
const rpcTimeout = 30 * time.Second

// grpcUnaryClient checks health and reads back the value it last put
// under a key of its own, over and over, putting a new one every fourth
// round. With reconnect it dials anew every 5 rounds.
func grpcUnaryClient(ctx context.Context, dial func() (*grpc.ClientConn, error), tl *tally, id int, reconnect bool, notServing *atomic.Int64) {
	var cc *grpc.ClientConn
	defer func() {
		if cc != nil {
			cc.Close()
		}
	}()
	round := 0
	r := rand.New(rand.NewPCG(uint64(id), 1))
	var key string // the key this client last put, and its value
	var value []byte
	loop(ctx, 1_000_000, 10*time.Minute, func() {
		if cc == nil || (reconnect && round%5 == 0) {
			if cc != nil {
				cc.Close()
			}
			var err error
			if cc, err = dial(); err != nil {
				tl.fail("grpc-dial", "dial", err)
				return
			}
		}
		round++
		hc, kv := healthpb.NewHealthClient(cc), kvgrpc.NewClient(cc)
		call := func(kind, what string, f func(context.Context) error) bool {
			cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
			defer cancel()
			err := f(cctx)
			if ctx.Err() != nil {
				return false // the test is over; not a failure
			}
			if err != nil {
				tl.fail(kind, what+" "+status.Code(err).String(), err)
				return false
			}
			tl.success(kind, "")
			return true
		}
		call("grpc-health", "check", func(ctx context.Context) error {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				notServing.Add(1)
			}
			return err
		})
		// A put every fourth round: every write takes the database's one
		// write lock, which a starting generation needs too.
		if round%4 == 1 {
			key = fmt.Sprintf("grpc/%d/%d", id, round%8)
			value = fmt.Appendf(nil, "%d %d %x", id, round, r.Uint64())
			if !call("grpc-kv", "put", func(ctx context.Context) error { _, err := kv.Put(ctx, key, value); return err }) {
				key = "" // unknown whether it took: read it no more
				return
			}
		}
		if key == "" {
			return
		}
		call("grpc-kv", "get", func(ctx context.Context) error {
			got, err := kv.Get(ctx, key)
			if err == nil && !bytes.Equal(got, value) {
				return fmt.Errorf("get %s after put: %q, want %q", key, got, value)
			}
			return err
		})
	})
}

// grpcWriter changes the keys under prefix until stopped: puts of rising
// counters, and now and then a delete. It is the only writer there, so
// what it was acknowledged is the store's state.
type grpcWriter struct {
	prefix string
	mu     sync.Mutex
	state  map[string][]byte
	halt   chan struct{} // closed by stop
	halted chan struct{} // closed by run once it made its last change
}

func (w *grpcWriter) run(ctx context.Context, dial func() (*grpc.ClientConn, error), tl *tally) {
	defer close(w.halted)
	cc, err := dial()
	if err != nil {
		tl.fail("grpc-writer", "dial", err)
		return
	}
	defer cc.Close()
	kv := kvgrpc.NewClient(cc)
	r := rand.New(rand.NewPCG(7, 7))
	deadline := time.Now().Add(10 * time.Minute)
	for n := 1; n < 1_000_000 && ctx.Err() == nil && time.Now().Before(deadline); n++ {
		select {
		case <-w.halt:
			return
		default:
		}
		if err := w.change(ctx, kv, r, n); err != nil {
			if ctx.Err() == nil {
				tl.fail("grpc-writer", status.Code(err).String(), err)
			}
			continue
		}
		tl.success("grpc-writer", "")
		time.Sleep(5 * time.Millisecond) // a change every few polls of the watches
	}
}

// change makes the nth change: a put of n, or every 7th time, a delete.
func (w *grpcWriter) change(ctx context.Context, kv *kvgrpc.Client, r *rand.Rand, n int) error {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	key := fmt.Sprintf("%sk%d", w.prefix, r.IntN(10))
	w.mu.Lock()
	_, exists := w.state[key]
	w.mu.Unlock()
	if exists && n%7 == 0 {
		if err := kv.Delete(ctx, key); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		w.mu.Lock()
		delete(w.state, key)
		w.mu.Unlock()
		return nil
	}
	value := []byte(strconv.Itoa(n))
	if _, err := kv.Put(ctx, key, value); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	w.mu.Lock()
	w.state[key] = value
	w.mu.Unlock()
	return nil
}

// stop halts the writer after its current call and returns the state.
func (w *grpcWriter) stop() map[string][]byte {
	close(w.halt)
	<-w.halted
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.state)
}

// grpcWatcher keeps a copy of prefix by watching it, and resumes from its
// revision whenever a watch ends.
type grpcWatcher struct {
	prefix  string
	resumes atomic.Int64
	mu      sync.Mutex
	view    kvgrpc.View
	highest map[string]int // the highest counter seen per key
}

func (w *grpcWatcher) entries() map[string][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.view.Entries()
}

func (w *grpcWatcher) run(ctx context.Context, dial func() (*grpc.ClientConn, error), tl *tally) {
	cc, err := dial()
	if err != nil {
		tl.fail("grpc-watch", "dial", err)
		return
	}
	defer cc.Close()
	kv := kvgrpc.NewClient(cc)
	w.highest = map[string]int{}
	loop(ctx, 100_000, 10*time.Minute, func() {
		w.mu.Lock()
		rev := w.view.Revision()
		w.mu.Unlock()
		st, err := kv.Watch(ctx, w.prefix, rev)
		if err != nil {
			if ctx.Err() == nil {
				tl.fail("grpc-watch", "watch "+status.Code(err).String(), err)
				time.Sleep(50 * time.Millisecond) // pace: the failure is counted; watch again soon
			}
			return
		}
		for {
			ev, err := st.Recv()
			if ctx.Err() != nil {
				return
			}
			if status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "draining") {
				w.resumes.Add(1)
				tl.resumed("grpc-watch")
				return
			}
			if err != nil {
				tl.fail("grpc-watch", "recv "+status.Code(err).String(), err)
				time.Sleep(50 * time.Millisecond) // pace: the failure is counted; watch again soon
				return
			}
			if err := w.apply(ev); err != nil {
				tl.fail("grpc-watch", "event", err)
				return
			}
			tl.success("grpc-watch", "")
		}
	})
}

// apply applies ev to the copy, which must then match the event's
// revision, and checks that no key's counter went back.
func (w *grpcWatcher) apply(ev *kvgrpc.WatchEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.view.Apply(ev); err != nil {
		return err
	}
	for _, e := range ev.Entries {
		if e.Deleted {
			continue
		}
		n, err := strconv.Atoi(string(e.Value))
		if err != nil {
			return fmt.Errorf("key %s: value %q is not a counter", e.Key, e.Value)
		}
		if n < w.highest[e.Key] {
			return fmt.Errorf("key %s went back from %d to %d", e.Key, w.highest[e.Key], n)
		}
		w.highest[e.Key] = n
	}
	return nil
}

func diffState(got, want map[string][]byte) string {
	var b strings.Builder
	for k, v := range want {
		if g, ok := got[k]; !ok || !bytes.Equal(g, v) {
			fmt.Fprintf(&b, "%s: %q, want %q; ", k, g, v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "%s: %q, want none; ", k, v)
		}
	}
	return b.String()
}

// retryCounter is a client stats handler that counts the RPC attempts
// grpc-go made as transparent retries.
type retryCounter struct{ n atomic.Int64 }

func (r *retryCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if b, ok := s.(*stats.Begin); ok && b.IsTransparentRetryAttempt {
		r.n.Add(1)
	}
}
func (r *retryCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (r *retryCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (r *retryCounter) HandleConn(context.Context, stats.ConnStats)                       {}
