package testkit

import (
	"context"
	"slices"
	"strings"
	"sync"
)

// MemKV is an in-memory key-value store with the method set that
// handlers.KV and kvgrpc.KV declare. Safe for concurrent use.
type MemKV struct {
	mu  sync.Mutex
	m   map[string][]byte
	err error
}

// NewMemKV returns an empty store.
func NewMemKV() *MemKV { return &MemKV{m: map[string][]byte{}} }

// SetErr makes every call fail with err from now on; nil ends that.
func (f *MemKV) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Set puts value at key, as a test sets the store up (SetErr does not
// apply).
func (f *MemKV) Set(key string, value []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[key] = value
}

// Snapshot returns a copy of the entries whose keys start with prefix.
func (f *MemKV) Snapshot(prefix string) map[string][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range f.m {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

// Get returns the value at key and whether there is one.
func (f *MemKV) Get(_ context.Context, key string) ([]byte, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, false, f.err
	}
	v, ok := f.m[key]
	return v, ok, nil
}

// Put sets key to value, and reports whether the key is new.
func (f *MemKV) Put(_ context.Context, key string, value []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, f.err
	}
	_, existed := f.m[key]
	f.m[key] = value
	return !existed, nil
}

// Delete removes key, and reports whether it was there.
func (f *MemKV) Delete(_ context.Context, key string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, f.err
	}
	_, existed := f.m[key]
	delete(f.m, key)
	return existed, nil
}

// List returns up to limit keys that start with prefix and sort after
// after, in order, and the key to list after next ("" at the end).
func (f *MemKV) List(_ context.Context, prefix, after string, limit int) ([]string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, "", f.err
	}
	var keys []string
	for k := range f.m {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	if len(keys) > limit {
		return keys[:limit], keys[limit-1], nil
	}
	return keys, "", nil
}
