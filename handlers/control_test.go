package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/testkit"
	"github.com/rs/zerolog"
)

const testToken = "0123456789abcdef0123456789abcdef"

// fakeController records what the control API asked of it.
type fakeController struct {
	upgradeErr error
	upgrades   atomic.Int32
	shutdowns  atomic.Int32
}

func (f *fakeController) Status() any { return map[string]any{"pid": 42, "state": "serving"} }

func (f *fakeController) Upgrade(ctx context.Context) (any, error) {
	f.upgrades.Add(1)
	if f.upgradeErr != nil {
		return nil, f.upgradeErr
	}
	return map[string]any{"pid": 43, "version": "v2"}, nil
}

func (f *fakeController) Shutdown() { f.shutdowns.Add(1) }

func newControl(t *testing.T, c handlers.Controller) http.Handler {
	t.Helper()
	return handlers.NewControl(handlers.ControlOptions{
		Token:       []byte(testToken),
		Controller:  c,
		Metrics:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("metrics")) }),
		AllowedUIDs: []int{1000, 0},
		Logger:      testkit.Logger(t),
	})
}

// Every security case is refused with the right status, and the action
// behind it is not taken.
func TestControlRefusals(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		target   string
		auth     string
		peer     int // -2: no peer uid in the context (TCP)
		body     string
		wantCode int
		wantBody string
	}{
		{"no token", "POST", "/shutdown", "", -2, "", 401, "missing or wrong token"},
		{"wrong token", "POST", "/shutdown", "Bearer " + strings.Repeat("x", len(testToken)), -2, "", 401, "missing or wrong token"},
		{"token prefix", "POST", "/shutdown", "Bearer " + testToken[:10], -2, "", 401, "missing or wrong token"},
		{"token longer", "POST", "/shutdown", "Bearer " + testToken + "x", -2, "", 401, "missing or wrong token"},
		{"not a bearer token", "POST", "/shutdown", "Basic " + testToken, -2, "", 401, "missing or wrong token"},
		{"token in query", "POST", "/shutdown?token=" + testToken, "", -2, "", 400, "never in the URL"},
		{"token in query with header", "POST", "/shutdown?access_token=" + testToken, "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"token value in query", "POST", "/shutdown?x=" + testToken, "Bearer " + testToken, -2, "", 400, "never in the URL"},
		// Regressions (issue 10 item 10): the check looked at the raw
		// query only, and not at the path at all.
		{"percent-encoded token in query", "POST", "/shutdown?x=" + pctEncode(testToken), "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"percent-encoded token, unparsable pair", "POST", "/shutdown?a;b=" + pctEncode(testToken), "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"double-encoded token in query", "POST", "/shutdown?x=" + strings.ReplaceAll(pctEncode(testToken), "%", "%25"), "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"percent-encoded parameter name", "POST", "/shutdown?%74oken=x", "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"upper-case parameter name", "POST", "/shutdown?Access_Token=x", "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"token-like parameter name", "POST", "/shutdown?id_token=x", "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"token in path", "GET", "/debug/pprof/" + testToken, "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"token as path", "GET", "/" + testToken, "", -2, "", 400, "never in the URL"},
		{"percent-encoded token in path", "GET", "/status/" + pctEncode(testToken), "Bearer " + testToken, -2, "", 400, "never in the URL"},
		{"wrong method", "GET", "/shutdown", "Bearer " + testToken, -2, "", 405, ""},
		{"wrong method upgrade", "DELETE", "/upgrade", "Bearer " + testToken, -2, "", 405, ""},
		{"unknown path", "GET", "/nope", "Bearer " + testToken, -2, "", 404, ""},
		{"oversized body", "POST", "/shutdown", "Bearer " + testToken, -2, strings.Repeat("a", handlers.MaxControlBody+1), 413, "takes no body"},
		{"other uid", "POST", "/shutdown", "Bearer " + testToken, 1234, "", 403, "peer uid 1234"},
		{"unknown uid", "POST", "/shutdown", "Bearer " + testToken, -1, "", 403, "peer uid -1"},
		{"other uid, no token", "GET", "/status", "", 1234, "", 403, ""},
		{"metrics without token", "GET", "/metrics", "", -2, "", 401, ""},
		{"pprof without token", "GET", "/debug/pprof/", "", -2, "", 401, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeController{}
			h := newControl(t, c)
			req := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			if tt.peer != -2 {
				req = req.WithContext(handlers.WithPeerUID(req.Context(), tt.peer))
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Errorf("%s %s: status = %d, want %d (%s)", tt.method, tt.target, rec.Code, tt.wantCode, rec.Body)
			}
			if !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("%s %s: body %q, want it to say %q", tt.method, tt.target, rec.Body, tt.wantBody)
			}
			if strings.Contains(rec.Body.String(), testToken) {
				t.Errorf("%s %s: the answer contains the token", tt.method, tt.target)
			}
			if c.shutdowns.Load() != 0 || c.upgrades.Load() != 0 {
				t.Errorf("%s %s: a refused request took the action", tt.method, tt.target)
			}
		})
	}
}

// pctEncode percent-encodes every byte of s.
func pctEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// Regression (issue 10 item 10): the control API logged the request path,
// so a token pasted into it was written to the log. Whatever the request,
// the log names the route and never holds the path, the query or the
// token in any spelling.
func TestControlLogHoldsNoPath(t *testing.T) {
	secrets := []string{testToken, pctEncode(testToken), "secret-path-part", "secret-query"}
	tests := []struct {
		method, target, auth string
		wantRoute            string
	}{
		{"GET", "/status/" + testToken, "Bearer " + testToken, "unmatched"},
		{"GET", "/" + testToken, "", "unmatched"},
		{"GET", "/status/" + pctEncode(testToken), "", "unmatched"},
		{"GET", "/debug/pprof/" + testToken, "Bearer " + testToken, "GET /debug/pprof/"},
		{"GET", "/debug/pprof/secret-path-part", "", "GET /debug/pprof/"},
		{"GET", "/secret-path-part", "Bearer " + testToken, "unmatched"},
		{"GET", "/status?x=" + pctEncode(testToken), "Bearer " + testToken, "GET /status"},
		{"GET", "/status?secret-query=1", "Bearer " + testToken, "GET /status"},
		{"GET", "/status?secret-query=1", "Bearer wrong", "GET /status"},
		{"POST", "/shutdown?token=secret-query", "", "POST /shutdown"},
	}
	for _, tt := range tests {
		var buf strings.Builder
		h := handlers.NewControl(handlers.ControlOptions{
			Token: []byte(testToken), Controller: &fakeController{}, Metrics: http.NotFoundHandler(),
			Logger: zerolog.New(&buf).Level(zerolog.DebugLevel),
		})
		req := httptest.NewRequest(tt.method, tt.target, nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
		log := buf.String()
		if log == "" {
			t.Errorf("%s %s: nothing logged, want one event", tt.method, tt.target)
		}
		for _, s := range secrets {
			if strings.Contains(log, s) {
				t.Errorf("%s %s: log %q holds %q", tt.method, tt.target, log, s)
			}
		}
		if want := fmt.Sprintf(`"route":%q`, tt.wantRoute); !strings.Contains(log, want) {
			t.Errorf("%s %s: log %q lacks %s", tt.method, tt.target, log, want)
		}
	}
}

func TestControlActions(t *testing.T) {
	do := func(t *testing.T, c *fakeController, method, path string, peer int) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("Authorization", "bearer "+testToken) // the scheme is case-insensitive
		if peer >= 0 {
			req = req.WithContext(handlers.WithPeerUID(req.Context(), peer))
		}
		rec := httptest.NewRecorder()
		newControl(t, c).ServeHTTP(rec, req)
		return rec
	}
	t.Run("status", func(t *testing.T) {
		rec := do(t, &fakeController{}, "GET", "/status", 1000)
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"state":"serving"`) {
			t.Errorf("GET /status: %d %s", rec.Code, rec.Body)
		}
	})
	t.Run("root peer", func(t *testing.T) {
		if rec := do(t, &fakeController{}, "GET", "/status", 0); rec.Code != 200 {
			t.Errorf("GET /status from uid 0: %d, want 200", rec.Code)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		c := &fakeController{}
		rec := do(t, c, "POST", "/shutdown", -1)
		if rec.Code != 202 || c.shutdowns.Load() != 1 {
			t.Errorf("POST /shutdown: %d, %d shutdowns; want 202 and 1", rec.Code, c.shutdowns.Load())
		}
	})
	t.Run("metrics and pprof", func(t *testing.T) {
		if rec := do(t, &fakeController{}, "GET", "/metrics", -1); rec.Code != 200 || rec.Body.String() != "metrics" {
			t.Errorf("GET /metrics: %d %q", rec.Code, rec.Body)
		}
		if rec := do(t, &fakeController{}, "GET", "/debug/pprof/", -1); rec.Code != 200 {
			t.Errorf("GET /debug/pprof/: %d", rec.Code)
		}
	})
	upgrades := []struct {
		name     string
		err      error
		wantCode int
		wantBody string
	}{
		{"ok", nil, 200, `"pid":43`},
		{"busy", &handlers.ControlError{Code: 409, Msg: "an upgrade is already in progress"}, 409, "already in progress"},
		{"failed", &handlers.ControlError{Code: 502, Msg: "new generation exited", Details: map[string]any{"exit_status": "exit status 2"}}, 502, `"exit_status":"exit status 2"`},
		{"gave up", context.DeadlineExceeded, 504, "it goes on"},
		{"other", errors.New("boom"), 500, "boom"},
	}
	for _, tt := range upgrades {
		t.Run("upgrade "+tt.name, func(t *testing.T) {
			c := &fakeController{upgradeErr: tt.err}
			rec := do(t, c, "POST", "/upgrade", -1)
			if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("POST /upgrade with %v: %d %s, want %d with %q", tt.err, rec.Code, rec.Body, tt.wantCode, tt.wantBody)
			}
			var v map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Errorf("POST /upgrade: body is not JSON: %v", err)
			}
		})
	}
}

// FuzzControlRequest throws arbitrary requests at the control API: it never
// panics, and never takes an action or answers 2xx without the token.
func FuzzControlRequest(f *testing.F) {
	f.Add("POST", "/shutdown", "Bearer "+testToken, "", -2)
	f.Add("GET", "/status?token=x", "", "", 1000)
	f.Add("POST", "/upgrade", "Bearer", "body", 0)
	f.Add("GET", "/debug/pprof/heap", "bearer  "+testToken+" ", "", -1)
	f.Add("PUT", "/%2e%2e/shutdown", "Bearer "+testToken, strings.Repeat("x", 2000), 5)
	f.Fuzz(func(t *testing.T, method, target, auth, body string, peer int) {
		req, err := http.NewRequest(method, "http://x"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", auth)
		if peer != -2 {
			req = req.WithContext(handlers.WithPeerUID(req.Context(), peer))
		}
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		req = req.WithContext(ctx)
		c := &fakeController{}
		h := handlers.NewControl(handlers.ControlOptions{
			Token: []byte(testToken), Controller: c, Metrics: http.NotFoundHandler(),
			AllowedUIDs: []int{1000, 0}, Logger: zerolog.Nop(),
		})
		if strings.HasPrefix(req.URL.Path, "/debug/pprof/profile") || strings.HasPrefix(req.URL.Path, "/debug/pprof/trace") {
			return // these profile for seconds by design
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		authed := strings.EqualFold(strings.SplitN(auth, " ", 2)[0], "bearer") &&
			strings.TrimSpace(strings.SplitN(auth+" ", " ", 2)[1]) == testToken
		if !authed && (rec.Code/100 == 2 || c.shutdowns.Load() != 0 || c.upgrades.Load() != 0) {
			t.Errorf("%s %q with Authorization %q: status %d, %d shutdowns, %d upgrades; want a refusal",
				method, target, auth, rec.Code, c.shutdowns.Load(), c.upgrades.Load())
		}
		if strings.Contains(rec.Body.String(), testToken) {
			t.Errorf("%s %q: the answer contains the token", method, target)
		}
	})
}
