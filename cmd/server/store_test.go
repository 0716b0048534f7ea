package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/kvstore"
	"github.com/handoff-go/handoff/internal/testkit"
)

// busyKV is a store whose every call fails with err.
type busyKV struct{ err error }

func (b busyKV) Get(context.Context, string) ([]byte, bool, error) { return nil, false, b.err }
func (b busyKV) Put(context.Context, string, []byte) (bool, error) { return false, b.err }
func (b busyKV) Delete(context.Context, string) (bool, error)      { return false, b.err }
func (b busyKV) List(context.Context, string, string, int) ([]string, string, error) {
	return nil, "", b.err
}

// The handlers do not import the store, nor the store the handlers: a
// closed store (a generation on its way out) and a busy database must
// still be answered 503, which a client retries, not 500.
func TestStoreErrorsAnswer503(t *testing.T) {
	closed, err := openStore(t.Context(), t.TempDir(), testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := closed.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		kv   handlers.KV
	}{
		{"closed store", closed},
		{"busy database", busyKV{fmt.Errorf("put %q: %w: database is locked", "a", kvstore.ErrBusy)}},
	} {
		h := handlers.KVPut(tt.kv, testkit.Logger(t))
		req := httptest.NewRequest("PUT", "/kv/a", strings.NewReader("v"))
		req.SetPathValue("key", "a")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 503 {
			t.Errorf("PUT /kv/a with a %s: %d %q, want 503", tt.name, rec.Code, rec.Body.String())
		}
	}
}
