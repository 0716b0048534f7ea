package kvgrpc_test

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/handoff-go/handoff/internal/kvgrpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// kvProto is kv.proto's messages as protobuf-go builds them from the
// .proto file: the reference the hand-written encoding must match.
func kvProto(t testing.TB) protoreflect.FileDescriptor {
	t.Helper()
	type T = descriptorpb.FieldDescriptorProto_Type
	f := func(name string, num int32, typ T, repeated bool, msg string) *descriptorpb.FieldDescriptorProto {
		label := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL
		if repeated {
			label = descriptorpb.FieldDescriptorProto_LABEL_REPEATED
		}
		fd := &descriptorpb.FieldDescriptorProto{Name: &name, Number: &num, Type: typ.Enum(), Label: label.Enum(), JsonName: &name}
		if msg != "" {
			fd.TypeName = proto.String(msg)
		}
		return fd
	}
	str, byt, boo, msg := descriptorpb.FieldDescriptorProto_TYPE_STRING, descriptorpb.FieldDescriptorProto_TYPE_BYTES,
		descriptorpb.FieldDescriptorProto_TYPE_BOOL, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE
	m := func(name string, fields ...*descriptorpb.FieldDescriptorProto) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: fields}
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("kv.proto"),
		Package: proto.String("handoff.kv.v1"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			m("Key", f("key", 1, str, false, "")),
			m("Entry", f("key", 1, str, false, ""), f("value", 2, byt, false, ""), f("deleted", 3, boo, false, "")),
			m("PutResult", f("created", 1, boo, false, "")),
			m("WatchRequest", f("prefix", 1, str, false, ""), f("revision", 2, str, false, "")),
			m("WatchEvent", f("snapshot", 1, boo, false, ""), f("entries", 2, msg, true, ".handoff.kv.v1.Entry"),
				f("revision", 3, str, false, "")),
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func marshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := kvgrpc.Codec().Marshal(v)
	if err != nil {
		t.Fatalf("Marshal(%T): %v", v, err)
	}
	return b.Materialize()
}

func unmarshal(b []byte, v any) error {
	return kvgrpc.Codec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, v)
}

// Every message encodes byte for byte as protobuf-go encodes the same
// message of kv.proto, and decodes what protobuf-go encodes.
func TestWireMatchesProtobuf(t *testing.T) {
	fd := kvProto(t)
	for _, tc := range []struct {
		msg  string
		json string // the message in protobuf's JSON mapping
		v    any    // the same message, hand-encoded
		zero any
	}{
		{"Key", `{"key":"users/42"}`, &kvgrpc.Key{Key: "users/42"}, &kvgrpc.Key{}},
		{"Key", `{}`, &kvgrpc.Key{}, &kvgrpc.Key{}},
		{"Entry", `{"key":"k✓","value":"AAEC/w=="}`, &kvgrpc.Entry{Key: "k✓", Value: []byte{0, 1, 2, 255}}, &kvgrpc.Entry{}},
		{"Entry", `{"key":"gone","deleted":true}`, &kvgrpc.Entry{Key: "gone", Deleted: true}, &kvgrpc.Entry{}},
		{"PutResult", `{"created":true}`, &kvgrpc.PutResult{Created: true}, &kvgrpc.PutResult{}},
		{"WatchRequest", `{"prefix":"w/","revision":"abc"}`, &kvgrpc.WatchRequest{Prefix: "w/", Revision: "abc"}, &kvgrpc.WatchRequest{}},
		{"WatchEvent", `{"snapshot":true,"entries":[{"key":"a","value":"eA=="},{"key":"b","deleted":true},{}],"revision":"r1"}`,
			&kvgrpc.WatchEvent{Snapshot: true, Entries: []kvgrpc.Entry{{Key: "a", Value: []byte("x")}, {Key: "b", Deleted: true}, {}}, Revision: "r1"},
			&kvgrpc.WatchEvent{}},
	} {
		t.Run(tc.msg+tc.json, func(t *testing.T) {
			dm := dynamicpb.NewMessage(fd.Messages().ByName(protoreflect.Name(tc.msg)))
			if err := protojson.Unmarshal([]byte(tc.json), dm); err != nil {
				t.Fatal(err)
			}
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(dm)
			if err != nil {
				t.Fatal(err)
			}
			if got := marshal(t, tc.v); !bytes.Equal(got, want) {
				t.Errorf("hand encoding = %x, protobuf-go's = %x", got, want)
			}
			if err := unmarshal(want, tc.zero); err != nil {
				t.Fatalf("decode protobuf-go's encoding: %v", err)
			}
			if !equalMsg(tc.zero, tc.v) {
				t.Errorf("decoded %+v, want %+v", tc.zero, tc.v)
			}
		})
	}
}

// equalMsg compares messages as protobuf does: a nil and an empty value
// are the same.
func equalMsg(a, b any) bool {
	return bytes.Equal(marshalNoT(a), marshalNoT(b)) && reflect.TypeOf(a) == reflect.TypeOf(b)
}

func marshalNoT(v any) []byte {
	b, err := kvgrpc.Codec().Marshal(v)
	if err != nil {
		return nil
	}
	return b.Materialize()
}

// Bad input is an error, never a panic or a wrong message.
func TestWireRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		v    any
	}{
		{"truncated tag", []byte{0x80}, &kvgrpc.Key{}},
		{"length past the end", []byte{0x0a, 0x05, 'a'}, &kvgrpc.Key{}},
		{"string is a varint", []byte{0x08, 0x01}, &kvgrpc.Key{}},
		{"bool is bytes", []byte{0x1a, 0x01, 0x01}, &kvgrpc.Entry{}},
		{"invalid UTF-8 key", []byte{0x0a, 0x01, 0xff}, &kvgrpc.Entry{}},
		{"bad entry inside an event", []byte{0x12, 0x02, 0x0a, 0x05}, &kvgrpc.WatchEvent{}},
		{"field number 0", []byte{0x00, 0x00}, &kvgrpc.PutResult{}},
	} {
		if err := unmarshal(tc.b, tc.v); err == nil {
			t.Errorf("%s: decoding %x into %T succeeded (%+v), want an error", tc.name, tc.b, tc.v, tc.v)
		}
	}
	// Unknown fields are skipped, as protobuf requires.
	var k kvgrpc.Key
	if err := unmarshal([]byte{0x0a, 0x01, 'k', 0x10, 0x07, 0x1d, 1, 2, 3, 4}, &k); err != nil || k.Key != "k" {
		t.Errorf("key with unknown fields: %+v, %v; want k, nil", k, err)
	}
}

// FuzzWatchEvent decodes arbitrary bytes as the message with the most
// structure: decoding never panics, and what decodes encodes and decodes
// again to the same message.
func FuzzWatchEvent(f *testing.F) {
	f.Add(marshal(f, &kvgrpc.WatchEvent{Snapshot: true, Entries: []kvgrpc.Entry{{Key: "a", Value: []byte("x")}, {Key: "b", Deleted: true}}, Revision: "r"}))
	f.Add(marshal(f, &kvgrpc.WatchEvent{}))
	f.Add([]byte{0x12, 0x02, 0x0a, 0x05})
	f.Add([]byte{0x0b, 0x0c}) // a group
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev kvgrpc.WatchEvent
		if unmarshal(b, &ev) != nil {
			return
		}
		var again kvgrpc.WatchEvent
		if err := unmarshal(marshal(t, &ev), &again); err != nil {
			t.Fatalf("re-decode %+v: %v", ev, err)
		}
		if !equalMsg(&ev, &again) {
			t.Fatalf("round trip: %+v became %+v", ev, again)
		}
	})
}
