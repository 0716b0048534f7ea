package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/rs/zerolog"
)

// fakeLifecycle is a Lifecycle a test sets by hand.
type fakeLifecycle struct {
	ready    bool
	draining chan struct{}
}

func (f *fakeLifecycle) IsReady() bool             { return f.ready }
func (f *fakeLifecycle) Draining() <-chan struct{} { return f.draining }

func newApp(t *testing.T, lc *fakeLifecycle) http.Handler {
	t.Helper()
	return handlers.New(handlers.Options{
		Info:      handlers.Info{PID: 42, Generation: 7, Version: "v9", StartedAt: time.Unix(1700000000, 0).UTC()},
		Lifecycle: lc,
		Logger:    testkit.Logger(t),
	})
}

func TestRoutes(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		target   string
		body     string
		ready    bool
		wantCode int
		wantBody string // a substring of the body
	}{
		{"root", "GET", "/", "", true, 200, `"generation":7`},
		{"root version", "GET", "/", "", true, 200, `"version":"v9"`},
		{"unknown path", "GET", "/nope", "", true, 404, ""},
		{"healthz", "GET", "/healthz", "", true, 200, "ok"},
		{"healthz while draining", "GET", "/healthz", "", false, 200, "ok"},
		{"readyz", "GET", "/readyz", "", true, 200, "ready"},
		{"readyz while draining", "GET", "/readyz", "", false, 503, "not ready"},
		{"slow 0", "GET", "/slow?ms=0", "", true, 200, `"slept_ms":0`},
		{"slow 20", "GET", "/slow?ms=20", "", true, 200, `"slept_ms":20`},
		{"slow missing", "GET", "/slow", "", true, 400, "ms must be"},
		{"slow not a number", "GET", "/slow?ms=abc", "", true, 400, "ms must be"},
		{"slow negative", "GET", "/slow?ms=-1", "", true, 400, "ms must be"},
		{"slow too long", "GET", "/slow?ms=60001", "", true, 400, "60000"},
		{"slow wrong method", "POST", "/slow?ms=1", "", true, 405, ""},
		{"echo", "POST", "/echo", "hello", true, 200, "hello"},
		{"echo empty", "POST", "/echo", "", true, 200, ""},
		{"echo at limit", "POST", "/echo", strings.Repeat("a", handlers.MaxEchoBody), true, 200, "aaaa"},
		{"echo over limit", "POST", "/echo", strings.Repeat("a", handlers.MaxEchoBody+1), true, 413, "larger than"},
		{"echo wrong method", "GET", "/echo", "", true, 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newApp(t, &fakeLifecycle{ready: tt.ready, draining: make(chan struct{})})
			req := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Errorf("%s %s: status = %d, want %d (body %q)", tt.method, tt.target, rec.Code, tt.wantCode, rec.Body.String())
			}
			if !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("%s %s: body = %.200q, want it to contain %q", tt.method, tt.target, rec.Body.String(), tt.wantBody)
			}
			if g := rec.Header().Get("X-Generation"); g != "7" {
				t.Errorf("%s %s: X-Generation = %q, want 7", tt.method, tt.target, g)
			}
		})
	}
}

func TestEchoKeepsBodyAndType(t *testing.T) {
	h := newApp(t, &fakeLifecycle{ready: true})
	body := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000)
	req := httptest.NewRequest("POST", "/echo", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-test")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if !bytes.Equal(rec.Body.Bytes(), body) {
		t.Errorf("POST /echo: body differs from the request (%d bytes, want %d)", rec.Body.Len(), len(body))
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/x-test" {
		t.Errorf("POST /echo: Content-Type = %q, want application/x-test", ct)
	}
}

func TestRootJSON(t *testing.T) {
	h := newApp(t, &fakeLifecycle{ready: true})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	var got handlers.Info
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("GET /: %v", err)
	}
	want := handlers.Info{PID: 42, Generation: 7, Version: "v9", StartedAt: time.Unix(1700000000, 0).UTC()}
	if got != want {
		t.Errorf("GET /: %+v, want %+v", got, want)
	}
}

// A client that goes away ends /slow at once instead of holding it.
func TestSlowEndsWhenClientLeaves(t *testing.T) {
	h := newApp(t, &fakeLifecycle{ready: true})
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequest("GET", "/slow?ms=60000", nil).WithContext(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("GET /slow?ms=60000 still running 10s after its client left")
	}
}

// At Debug level every request is logged, without its query string; a
// stream still flushes through the logging writer.
func TestRequestLog(t *testing.T) {
	var buf bytes.Buffer
	h := handlers.New(handlers.Options{
		Info:      handlers.Info{Generation: 1},
		Lifecycle: &fakeLifecycle{ready: true, draining: make(chan struct{})},
		Logger:    zerolog.New(&buf).Level(zerolog.DebugLevel),
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/slow?ms=1&secret=x", nil))
	line := buf.String()
	for _, want := range []string{`"message":"request"`, `"route":"GET /slow"`, `"status":200`, `"method":"GET"`} {
		if !strings.Contains(line, want) {
			t.Errorf("request log %q lacks %s", line, want)
		}
	}
	if strings.Contains(line, "secret") {
		t.Errorf("request log %q contains the query string", line)
	}
}

// Regression (issue 10 item 10): the request log held the path, which may
// hold a user's key or a secret pasted into it. It names the route only.
func TestRequestLogHoldsNoPath(t *testing.T) {
	for _, tt := range []struct{ method, target, route string }{
		{"PUT", "/kv/secret-key", "PUT /kv/{key...}"},
		{"GET", "/kv/secret-key", "GET /kv/{key...}"},
		{"GET", "/secret-path", "unmatched"},
		{"GET", "/healthz/secret-path", "unmatched"},
		{"GET", "/kv?prefix=secret-prefix", "GET /kv"},
	} {
		var buf bytes.Buffer
		h := handlers.New(handlers.Options{
			Info:      handlers.Info{Generation: 1},
			Lifecycle: &fakeLifecycle{ready: true, draining: make(chan struct{})},
			Logger:    zerolog.New(&buf).Level(zerolog.DebugLevel),
			KV:        testkit.NewMemKV(),
		})
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(tt.method, tt.target, strings.NewReader("v")))
		line := buf.String()
		if strings.Contains(line, "secret") {
			t.Errorf("%s %s: request log %q holds the path or query", tt.method, tt.target, line)
		}
		if want := `"route":"` + tt.route + `"`; !strings.Contains(line, want) {
			t.Errorf("%s %s: request log %q lacks %s", tt.method, tt.target, line, want)
		}
	}
}

// Regression (issue 10 item 14): POST /echo of a body over MaxEchoBody with
// "Expect: 100-continue" was answered "100 Continue", then, once the client
// had sent the body, the connection was reset instead of answered 413. A
// raw client acts as curl does: it sends the headers, waits for the
// interim answer, and sends the body only after a 100.
func TestEchoRefusesOversizedBodyBefore100Continue(t *testing.T) {
	srv := httptest.NewServer(newApp(t, &fakeLifecycle{ready: true, draining: make(chan struct{})}))
	defer srv.Close()
	for _, size := range []int{handlers.MaxEchoBody + 1, 8 * handlers.MaxEchoBody} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c := testkit.Dial(t, srv.Listener.Addr().String())
			c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", size)
			br := c.Reader
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("POST /echo of %d bytes with Expect: 100-continue: reading the answer: %v", size, err)
			}
			if resp.StatusCode == http.StatusContinue {
				t.Errorf("POST /echo of %d bytes: answered 100 Continue for a body it refuses, want 413 at once", size)
				// Go on as curl does: send the body, read the final answer.
				go func() { // ends when the body is written or the connection fails
					c.Write(bytes.Repeat([]byte("a"), size))
				}()
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatalf("POST /echo of %d bytes, body sent after 100 Continue: %v, want a 413", size, err)
				}
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("POST /echo of %d bytes: reading the 413's body: %v", size, err)
			}
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("POST /echo of %d bytes: status %d, want 413", size, resp.StatusCode)
			}
			var e struct{ Error string }
			if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, "larger than 1048576 bytes") {
				t.Errorf("POST /echo of %d bytes: 413 body %q, want a JSON error that names the limit", size, body)
			}
			if !resp.Close {
				t.Errorf("POST /echo of %d bytes: 413 without Connection: close, but the body was never sent", size)
			}
			// The server closes cleanly: end of stream, not a reset.
			if n, err := br.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("POST /echo of %d bytes: after the 413, read %d bytes, error %v; want EOF", size, n, err)
			}
		})
	}
}
