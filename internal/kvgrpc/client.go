package kvgrpc

import (
	"context"
	"fmt"
	"maps"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Client calls the service over a gRPC connection. Its methods return
// gRPC status errors (status.Code tells codes.NotFound and the rest).
type Client struct {
	cc grpc.ClientConnInterface
}

// NewClient returns a Client that calls over cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

func (c *Client) call(ctx context.Context, method string, req, resp any, opts []grpc.CallOption) error {
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(codec{})}, opts...)
	return c.cc.Invoke(ctx, "/"+ServiceName+"/"+method, req, resp, opts...)
}

// Get returns key's value.
func (c *Client) Get(ctx context.Context, key string, opts ...grpc.CallOption) ([]byte, error) {
	var e Entry
	if err := c.call(ctx, "Get", &Key{Key: key}, &e, opts); err != nil {
		return nil, err
	}
	return e.Value, nil
}

// Put sets key's value and reports whether key is new.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...grpc.CallOption) (created bool, err error) {
	var r PutResult
	if err := c.call(ctx, "Put", &Entry{Key: key, Value: value}, &r, opts); err != nil {
		return false, err
	}
	return r.Created, nil
}

// Delete removes key.
func (c *Client) Delete(ctx context.Context, key string, opts ...grpc.CallOption) error {
	return c.call(ctx, "Delete", &Key{Key: key}, &emptypb.Empty{}, opts)
}

// Watch starts a watch of the keys that start with prefix. revision is
// that of the last event the caller applied (View.Revision), or empty.
func (c *Client) Watch(ctx context.Context, prefix, revision string, opts ...grpc.CallOption) (*Watch, error) {
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(codec{})}, opts...)
	desc := &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}
	st, err := c.cc.NewStream(ctx, desc, "/"+ServiceName+"/Watch", opts...)
	if err != nil {
		return nil, err
	}
	if err := st.SendMsg(&WatchRequest{Prefix: prefix, Revision: revision}); err != nil {
		return nil, err
	}
	if err := st.CloseSend(); err != nil {
		return nil, err
	}
	return &Watch{st: st}, nil
}

// Watch is an open watch stream.
type Watch struct {
	st grpc.ClientStream
}

// Recv returns the next event. The stream's end is an error: io.EOF never
// comes, since a watch ends only by the server's status (codes.Unavailable
// when it drains: watch again) or the caller's context.
func (w *Watch) Recv() (*WatchEvent, error) {
	ev := new(WatchEvent)
	if err := w.st.RecvMsg(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// View is a client's copy of a watched prefix, kept by applying the
// events of one watch after another. The zero value is an empty copy.
type View struct {
	entries  map[string][]byte
	revision string
}

// Apply applies ev, and fails if the copy's revision then differs from
// ev.Revision: it has missed a change, or the server sent a wrong one.
func (v *View) Apply(ev *WatchEvent) error {
	if ev.Snapshot || v.entries == nil {
		v.entries = map[string][]byte{}
	}
	for _, e := range ev.Entries {
		if e.Deleted {
			delete(v.entries, e.Key)
		} else {
			v.entries[e.Key] = e.Value
		}
	}
	if got := Revision(v.entries); got != ev.Revision {
		return fmt.Errorf("copy of %d keys has revision %s after the event, server says %s", len(v.entries), got, ev.Revision)
	}
	v.revision = ev.Revision
	return nil
}

// Revision is that of the last event applied, or "" before the first: the
// revision argument of the next Watch.
func (v *View) Revision() string { return v.revision }

// Entries returns a copy of the view's keys and values.
func (v *View) Entries() map[string][]byte { return maps.Clone(v.entries) }
