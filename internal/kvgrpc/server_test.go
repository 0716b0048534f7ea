package kvgrpc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/kvgrpc"
	"github.com/handoff-go/handoff/internal/testkit"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// newService serves the service on a loopback port and returns a client
// of it, the store, and the function that begins the drain.
func newService(t *testing.T) (*kvgrpc.Client, *testkit.MemKV, func()) {
	t.Helper()
	kv := testkit.NewMemKV()
	c, drain := serveKV(t, kv)
	return c, kv, drain
}

// serveKV serves the service over kv on a loopback port.
func serveKV(t *testing.T, kv kvgrpc.KV) (*kvgrpc.Client, func()) {
	t.Helper()
	draining := make(chan struct{})
	gs := grpc.NewServer(grpc.ForceServerCodecV2(kvgrpc.Codec()))
	kvgrpc.Register(gs, kvgrpc.Options{
		KV: kv, Draining: draining, PollInterval: 5 * time.Millisecond,
		Logger: testkit.Logger(t),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln) // ends at Stop
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	var once sync.Once
	return kvgrpc.NewClient(cc), func() { once.Do(func() { close(draining) }) }
}

func TestUnary(t *testing.T) {
	c, kv, _ := newService(t)
	ctx := t.Context()
	if created, err := c.Put(ctx, "users/42", []byte("ada")); err != nil || !created {
		t.Fatalf("Put new key: created %v, %v; want true, nil", created, err)
	}
	if created, err := c.Put(ctx, "users/42", []byte{0, 255}); err != nil || created {
		t.Fatalf("Put existing key: created %v, %v; want false, nil", created, err)
	}
	if v, err := c.Get(ctx, "users/42"); err != nil || !bytes.Equal(v, []byte{0, 255}) {
		t.Fatalf("Get: %q, %v; want \"\\x00\\xff\", nil", v, err)
	}
	if err := c.Delete(ctx, "users/42"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"Get absent", func() error { _, err := c.Get(ctx, "users/42"); return err }, codes.NotFound},
		{"Delete absent", func() error { return c.Delete(ctx, "users/42") }, codes.NotFound},
		{"Get empty key", func() error { _, err := c.Get(ctx, ""); return err }, codes.InvalidArgument},
		{"Put control character", func() error { _, err := c.Put(ctx, "a\nb", nil); return err }, codes.InvalidArgument},
		{"Put long key", func() error { _, err := c.Put(ctx, strings.Repeat("k", handlers.MaxKeyLen+1), nil); return err }, codes.InvalidArgument},
		{"Put big value", func() error { _, err := c.Put(ctx, "big", make([]byte, handlers.MaxValueSize+1)); return err }, codes.InvalidArgument},
		{"Get while the store is busy", func() error {
			kv.SetErr(fmt.Errorf("locked: %w", handlers.ErrUnavailable))
			defer kv.SetErr(nil)
			_, err := c.Get(ctx, "k")
			return err
		}, codes.Unavailable},
		{"Put while the store fails", func() error {
			kv.SetErr(errors.New("disk full"))
			defer kv.SetErr(nil)
			_, err := c.Put(ctx, "k", nil)
			return err
		}, codes.Internal},
	} {
		if got := status.Code(tc.call()); got != tc.want {
			t.Errorf("%s: code %v, want %v", tc.name, got, tc.want)
		}
	}
}

// recv reads the next event of w and applies it to v.
func recv(t *testing.T, w *kvgrpc.Watch, v *kvgrpc.View) *kvgrpc.WatchEvent {
	t.Helper()
	ev, err := w.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if err := v.Apply(ev); err != nil {
		t.Fatalf("Apply %+v: %v", ev, err)
	}
	return ev
}

func TestWatch(t *testing.T) {
	c, kv, drain := newService(t)
	// A watch that never ends fails the test with DeadlineExceeded.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	kv.Put(ctx, "w/a", []byte("1"))
	kv.Put(ctx, "w/b", []byte("1"))
	kv.Put(ctx, "x/outside", []byte("1"))

	var v kvgrpc.View
	w, err := c.Watch(ctx, "w/", "")
	if err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, w, &v); !ev.Snapshot || len(ev.Entries) != 2 {
		t.Fatalf("first event %+v, want a snapshot of the 2 keys under w/", ev)
	}

	kv.Put(ctx, "w/a", []byte("2"))
	kv.Delete(ctx, "w/b")
	kv.Put(ctx, "w/c", []byte("1"))
	kv.Put(ctx, "x/outside", []byte("2"))
	want := kv.Snapshot("w/")
	for !maps.EqualFunc(v.Entries(), want, bytes.Equal) {
		if ev := recv(t, w, &v); ev.Snapshot {
			t.Fatalf("later event %+v is a snapshot, want changes", ev)
		}
	}

	// The drain ends the watch with Unavailable; the next watch from the
	// same revision starts with no snapshot, since nothing changed.
	drain()
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), v.Revision()) {
		t.Fatalf("watch at the drain ended with %v, want Unavailable naming revision %s", err, v.Revision())
	}
	w, err = c.Watch(ctx, "w/", v.Revision())
	if err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, w, &v); ev.Snapshot || len(ev.Entries) != 0 {
		t.Errorf("first event of a watch resumed at the current revision: %+v, want no entries", ev)
	}
	// A client whose copy is out of date gets a fresh snapshot.
	kv.Put(ctx, "w/d", []byte("1"))
	w, err = c.Watch(ctx, "w/", v.Revision())
	if err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, w, &v); !ev.Snapshot || !maps.EqualFunc(v.Entries(), kv.Snapshot("w/"), bytes.Equal) {
		t.Errorf("first event of a watch resumed at an old revision: %+v, want a snapshot of the store", ev)
	}
}

func TestWatchTooBig(t *testing.T) {
	c, kv, _ := newService(t)
	for i := range kvgrpc.MaxWatchKeys + 1 {
		kv.Put(t.Context(), fmt.Sprintf("w/%04d", i), nil)
	}
	w, err := c.Watch(t.Context(), "w/", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("watch of %d keys: %v, want FailedPrecondition", kvgrpc.MaxWatchKeys+1, err)
	}
}

// A view that missed a change notices at the next event.
func TestViewDetectsMissedChange(t *testing.T) {
	var v kvgrpc.View
	snap := &kvgrpc.WatchEvent{Snapshot: true, Entries: []kvgrpc.Entry{{Key: "a", Value: []byte("1")}}}
	snap.Revision = kvgrpc.Revision(map[string][]byte{"a": []byte("1")})
	if err := v.Apply(snap); err != nil {
		t.Fatal(err)
	}
	// The server's state is now a=2, b=1, but the event that set a=2 was
	// lost: this one brings only b.
	ev := &kvgrpc.WatchEvent{Entries: []kvgrpc.Entry{{Key: "b", Value: []byte("1")}},
		Revision: kvgrpc.Revision(map[string][]byte{"a": []byte("2"), "b": []byte("1")})}
	if err := v.Apply(ev); err == nil {
		t.Error("Apply after a missed change succeeded, want a revision mismatch")
	}
}

// busyErr is a transient store error as the store reports it: its own
// type with Unavailable() true, not handlers.ErrUnavailable itself.
type busyErr struct{}

func (busyErr) Error() string     { return "database is busy" }
func (busyErr) Unavailable() bool { return true }

type busyKV struct{ *testkit.MemKV }

func (busyKV) Get(context.Context, string) ([]byte, bool, error) {
	return nil, false, fmt.Errorf("get: %w", busyErr{})
}

// A busy store is UNAVAILABLE (retry), not INTERNAL.
func TestBusyStoreIsUnavailable(t *testing.T) {
	c, _ := serveKV(t, busyKV{testkit.NewMemKV()})
	_, err := c.Get(t.Context(), "k")
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Get from a busy store: %v, want code Unavailable", err)
	}
}
