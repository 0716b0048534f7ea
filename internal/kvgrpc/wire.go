package kvgrpc

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// The messages of kv.proto, encoded in protobuf's wire format by hand
// (this module has no protoc). Encoding omits zero values, as proto3 does;
// decoding skips unknown fields and keeps the last of a repeated scalar.

// Key names one key: the request of Get and Delete.
type Key struct {
	Key string
}

// Entry is a key and its value: the request of Put, the answer of Get, and
// one change in a WatchEvent, where Deleted means the key is gone.
type Entry struct {
	Key     string
	Value   []byte
	Deleted bool
}

// PutResult answers Put.
type PutResult struct {
	Created bool // the key is new
}

// WatchRequest asks for the keys that start with Prefix. Revision is that
// of the last event the client applied, or empty.
type WatchRequest struct {
	Prefix   string
	Revision string
}

// WatchEvent is one message of a Watch stream. With Snapshot, Entries are
// every key of the prefix; otherwise they are changes. Revision names the
// prefix's state after the event (see Revision).
type WatchEvent struct {
	Snapshot bool
	Entries  []Entry
	Revision string
}

// message is implemented by the pointers to this package's messages.
type message interface {
	marshal(b []byte) []byte
	unmarshal(b []byte) error
}

func (m *Key) marshal(b []byte) []byte { return appendString(b, 1, m.Key) }

func (m *Key) unmarshal(b []byte) error {
	*m = Key{}
	return eachField(b, func(f field) (err error) {
		if f.num == 1 {
			m.Key, err = f.string()
		}
		return err
	})
}

func (m *Entry) marshal(b []byte) []byte {
	b = appendString(b, 1, m.Key)
	if len(m.Value) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, m.Value)
	}
	return appendBool(b, 3, m.Deleted)
}

func (m *Entry) unmarshal(b []byte) error {
	*m = Entry{}
	return eachField(b, func(f field) (err error) {
		switch f.num {
		case 1:
			m.Key, err = f.string()
		case 2:
			m.Value, err = f.bytes()
		case 3:
			m.Deleted, err = f.bool()
		}
		return err
	})
}

func (m *PutResult) marshal(b []byte) []byte { return appendBool(b, 1, m.Created) }

func (m *PutResult) unmarshal(b []byte) error {
	*m = PutResult{}
	return eachField(b, func(f field) (err error) {
		if f.num == 1 {
			m.Created, err = f.bool()
		}
		return err
	})
}

func (m *WatchRequest) marshal(b []byte) []byte {
	return appendString(appendString(b, 1, m.Prefix), 2, m.Revision)
}

func (m *WatchRequest) unmarshal(b []byte) error {
	*m = WatchRequest{}
	return eachField(b, func(f field) (err error) {
		switch f.num {
		case 1:
			m.Prefix, err = f.string()
		case 2:
			m.Revision, err = f.string()
		}
		return err
	})
}

func (m *WatchEvent) marshal(b []byte) []byte {
	b = appendBool(b, 1, m.Snapshot)
	for i := range m.Entries {
		// An embedded message is a length-delimited field; its length is
		// known only once it is encoded.
		e := m.Entries[i].marshal(nil)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	return appendString(b, 3, m.Revision)
}

func (m *WatchEvent) unmarshal(b []byte) error {
	*m = WatchEvent{}
	return eachField(b, func(f field) error {
		switch f.num {
		case 1:
			v, err := f.bool()
			m.Snapshot = v
			return err
		case 2:
			v, err := f.bytes()
			if err != nil {
				return err
			}
			var e Entry
			if err := e.unmarshal(v); err != nil {
				return fmt.Errorf("entries[%d]: %w", len(m.Entries), err)
			}
			m.Entries = append(m.Entries, e)
		case 3:
			v, err := f.string()
			m.Revision = v
			return err
		}
		return nil
	})
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, 1)
}

// field is one field of an encoded message: its number, wire type, and
// value (a varint's, or a length-delimited field's bytes).
type field struct {
	num    protowire.Number
	typ    protowire.Type
	varint uint64
	data   []byte
}

var errWireType = errors.New("wrong wire type")

func (f field) string() (string, error) {
	if f.typ != protowire.BytesType {
		return "", fmt.Errorf("field %d: %w", f.num, errWireType)
	}
	if !utf8.Valid(f.data) {
		return "", fmt.Errorf("field %d: string is not valid UTF-8", f.num)
	}
	return string(f.data), nil
}

func (f field) bytes() ([]byte, error) {
	if f.typ != protowire.BytesType {
		return nil, fmt.Errorf("field %d: %w", f.num, errWireType)
	}
	return f.data, nil
}

func (f field) bool() (bool, error) {
	if f.typ != protowire.VarintType {
		return false, fmt.Errorf("field %d: %w", f.num, errWireType)
	}
	return f.varint != 0, nil
}

// eachField calls fn with every field of the encoded message b, in order.
func eachField(b []byte, fn func(field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.varint, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.data, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// codec is the gRPC codec of a server or client of this service: this
// package's messages by hand, every other message (the health service's,
// emptypb.Empty) by grpc's protobuf codec. Both are protobuf on the wire,
// so its name is grpc's protobuf codec's name, and a client generated from
// kv.proto speaks to the service.
type codec struct{}

// Codec returns the codec a grpc.Server that registers the service must be
// created with: grpc.NewServer(grpc.ForceServerCodecV2(kvgrpc.Codec())).
// The Client sets it on its calls itself.
func Codec() encoding.CodecV2 { return codec{} }

func (codec) Name() string { return grpcproto.Name }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(message); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.marshal(nil))}, nil
	}
	return protoCodec().Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(message); ok {
		// Materialize copies: decoded strings and values may outlive data.
		return m.unmarshal(data.Materialize())
	}
	return protoCodec().Unmarshal(data, v)
}

func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2(grpcproto.Name) }

// Revision is the revision of a prefix that holds entries (key to value):
// the hex of the first 16 bytes of a SHA-256 over the keys in byte order,
// each key and value preceded by its length as a protobuf varint. It does
// not depend on the server that computes it, so a client's copy can be
// checked against any generation's answer.
func Revision(entries map[string][]byte) string {
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	var b []byte
	for _, k := range keys {
		b = protowire.AppendString(b[:0], k)
		b = protowire.AppendBytes(b, entries[k])
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
