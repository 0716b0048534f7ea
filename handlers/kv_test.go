package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/handoff-go/handoff/handlers"
	"github.com/handoff-go/handoff/internal/testkit"
)

func newKVApp(t testing.TB, kv handlers.KV) http.Handler {
	t.Helper()
	return handlers.New(handlers.Options{
		Info:      handlers.Info{Generation: 7},
		Lifecycle: &fakeLifecycle{ready: true},
		Logger:    testkit.Logger(t),
		KV:        kv,
	})
}

// do sends one request; body "" sends none.
func do(h http.Handler, method, target, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// The steps run in order against one store.
func TestKV(t *testing.T) {
	h := newKVApp(t, testkit.NewMemKV())
	long := strings.Repeat("k", handlers.MaxKeyLen)
	steps := []struct {
		method, target, body string
		wantCode             int
		wantBody             string // a substring of the body
	}{
		{"GET", "/kv/a", "", 404, "key not found"},
		{"PUT", "/kv/a", "one", 201, ""},
		{"GET", "/kv/a", "", 200, "one"},
		{"HEAD", "/kv/a", "", 200, ""},
		{"PUT", "/kv/a", "two", 204, ""},
		{"GET", "/kv/a", "", 200, "two"},
		{"PUT", "/kv/dir/sub/key", "nested", 201, ""},
		{"GET", "/kv/dir/sub/key", "", 200, "nested"},
		{"PUT", "/kv/sp%20ace%2Fslash", "escaped", 201, ""},
		{"GET", "/kv/sp%20ace%2Fslash", "", 200, "escaped"},
		{"GET", "/kv/sp%20ace/slash", "", 200, "escaped"}, // the same key: %2F decodes to /
		{"PUT", "/kv/%E2%9C%93", "check", 201, ""},
		{"GET", "/kv/✓", "", 200, "check"},
		{"PUT", "/kv/empty", "", 201, ""},
		{"GET", "/kv/empty", "", 200, ""},
		{"DELETE", "/kv/a", "", 204, ""},
		{"DELETE", "/kv/a", "", 404, "key not found"},
		{"GET", "/kv/a", "", 404, "key not found"},
		{"PUT", "/kv/" + long, "max key", 201, ""},
		{"PUT", "/kv/big", strings.Repeat("v", handlers.MaxValueSize), 201, ""},
		{"PUT", "/kv/big", strings.Repeat("v", handlers.MaxValueSize+1), 413, "larger than 65536 bytes"},
		{"GET", "/kv/big", "", 200, "vvvv"}, // the 413 left the value alone

		{"PUT", "/kv/", "x", 400, "key is empty"},
		{"GET", "/kv/", "", 400, "key is empty"},
		{"DELETE", "/kv/", "", 400, "key is empty"},
		{"PUT", "/kv/" + long + "k", "x", 400, "use at most 512 bytes"},
		{"PUT", "/kv/%FF", "x", 400, "not valid UTF-8"},
		{"GET", "/kv/a%C3", "", 400, "not valid UTF-8"},
		{"PUT", "/kv/a%00b", "x", 400, "control character U+0000 at byte 1"},
		{"PUT", "/kv/%0A", "x", 400, "control character U+000A"},
		{"PUT", "/kv/%7F", "x", 400, "control character U+007F"},
		{"PUT", "/kv/%C2%85", "x", 400, "control character U+0085"},
		{"PUT", "/kv/..", "x", 400, "cannot be named in a URL"},
		{"PUT", "/kv/%2E", "x", 400, "cannot be named in a URL"},
		{"GET", "/kv/%2e%2E", "", 400, "cannot be named in a URL"},

		{"POST", "/kv/a", "x", 405, ""},
		{"PATCH", "/kv/a", "x", 405, ""},
		{"POST", "/kv", "x", 405, ""},
		// Not redirected to /kv/, the empty key, as the mux did.
		{"DELETE", "/kv", "", 405, ""},
		{"PUT", "/kv", "", 405, ""},
		{"POST", "/kv/", "x", 405, ""},

		{"GET", "/kv?limit=0", "", 400, "limit must be a whole number from 1 to 1000"},
		{"GET", "/kv?limit=1001", "", 400, "limit must be a whole number from 1 to 1000"},
		{"GET", "/kv?limit=ten", "", 400, "limit must be"},
		{"GET", "/kv?limit=-1", "", 400, "limit must be"},
		{"GET", "/kv?prefix=%00", "", 400, "query parameter prefix: key has control character"},
		{"GET", "/kv?after=%FF", "", 400, "query parameter after: key is not valid UTF-8"},
		{"GET", "/kv?prefix=" + long + "k", "", 400, "query parameter prefix: key is 513 bytes long"},
		{"GET", "/kv?limit=1000", "", 200, `"keys":["`},
		{"GET", "/kv?prefix=nothing", "", 200, `{"keys":[],"next":""}`},
	}
	for _, st := range steps {
		rec := do(h, st.method, st.target, st.body)
		target := st.target
		if len(target) > 40 {
			target = target[:40] + "…"
		}
		if rec.Code != st.wantCode {
			t.Errorf("%s %s: status = %d, want %d (body %.200q)", st.method, target, rec.Code, st.wantCode, rec.Body.String())
			continue
		}
		if !strings.Contains(rec.Body.String(), st.wantBody) {
			t.Errorf("%s %s: body = %.200q, want it to contain %q", st.method, target, rec.Body.String(), st.wantBody)
		}
		ct := rec.Header().Get("Content-Type")
		switch {
		case rec.Code >= 400 && rec.Code != 405: // the mux's 405 is plain text
			var e struct{ Error string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || ct != "application/json" {
				t.Errorf("%s %s: error body %q (Content-Type %q), want JSON {\"error\": …}", st.method, target, rec.Body.String(), ct)
			}
		case st.method == "GET" && strings.HasPrefix(st.target, "/kv/") && rec.Code == 200:
			if ct != "application/octet-stream" {
				t.Errorf("%s %s: Content-Type = %q, want application/octet-stream", st.method, target, ct)
			}
		}
	}
}

func TestKVCreatedLocation(t *testing.T) {
	h := newKVApp(t, testkit.NewMemKV())
	rec := do(h, "PUT", "/kv/a%20b/c", "v")
	if loc := rec.Header().Get("Location"); rec.Code != 201 || loc != "/kv/a%20b/c" {
		t.Errorf("PUT /kv/a%%20b/c: status %d, Location %q; want 201, /kv/a%%20b/c", rec.Code, loc)
	}
}

// Regression (issue 10 item 13): PUT /kv/x/%2e%2e/y answered
// Location: /kv/x/../y, which a client resolves to the key "y", and the
// mux redirected DELETE /kv/a//b to /kv/a/b, another key. Keys are
// opaque: each path below names its own key, never cleaned into another,
// and the Location of a new key, requested as a client resolves it, names
// the same key. Through a real server and client, which send the path as
// written.
func TestKVKeysAreOpaque(t *testing.T) {
	tests := []struct {
		path     string // as sent, after /kv/
		key      string
		location string
	}{
		{"x/%2e%2e/y", "x/../y", "/kv/x%2F..%2Fy"},
		{"x/../y", "x/../y", "/kv/x%2F..%2Fy"},
		{"a//b", "a//b", "/kv/a%2F%2Fb"},
		{"a/./b", "a/./b", "/kv/a%2F.%2Fb"},
		{"a/", "a/", "/kv/a%2F"},
		{"/a", "/a", "/kv/%2Fa"},
		{"..%2F..", "../..", "/kv/..%2F.."},
		{"a/..", "a/..", "/kv/a%2F.."},
		{"a%2Fb", "a/b", "/kv/a/b"},
		{"a%2F..%2Fb", "a/../b", "/kv/a%2F..%2Fb"},
		{"users/42", "users/42", "/kv/users/42"},
		{"a%20b/c", "a b/c", "/kv/a%20b/c"},
		{"q%3Fx%23y", "q?x#y", "/kv/q%3Fx%23y"},
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	send := func(t *testing.T, method, target, body string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, target, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, target, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			kv := testkit.NewMemKV()
			kv.Set("other", []byte("untouched"))
			srv := httptest.NewServer(newKVApp(t, kv))
			defer srv.Close()
			target := srv.URL + "/kv/" + tt.path

			resp, body := send(t, "PUT", target, "v:"+tt.key)
			if resp.StatusCode != 201 {
				t.Fatalf("PUT /kv/%s: status %d (Location %q, body %q), want 201", tt.path, resp.StatusCode, resp.Header.Get("Location"), body)
			}
			if m := kv.Snapshot(""); string(m[tt.key]) != "v:"+tt.key || len(m) != 2 {
				t.Fatalf("PUT /kv/%s: store %q, want key %q set and nothing else", tt.path, m, tt.key)
			}
			loc := resp.Header.Get("Location")
			if loc != tt.location {
				t.Errorf("PUT /kv/%s: Location %q, want %q", tt.path, loc, tt.location)
			}
			// Request the Location the way a client follows one: resolved
			// against the URL of the request (RFC 3986, dot segments removed).
			ref, err := url.Parse(loc)
			if err != nil {
				t.Fatalf("Location %q: %v", loc, err)
			}
			base, _ := url.Parse(target)
			if resp, body := send(t, "GET", base.ResolveReference(ref).String(), ""); resp.StatusCode != 200 || body != "v:"+tt.key {
				t.Errorf("GET of Location %q: %d %q, want 200 %q", loc, resp.StatusCode, body, "v:"+tt.key)
			}
			if resp, body := send(t, "DELETE", target, ""); resp.StatusCode != 204 {
				t.Errorf("DELETE /kv/%s: %d %q (Location %q), want 204", tt.path, resp.StatusCode, body, resp.Header.Get("Location"))
			}
			m := kv.Snapshot("")
			if _, ok := m[tt.key]; ok || string(m["other"]) != "untouched" || len(m) != 1 {
				t.Errorf("after DELETE /kv/%s: store %q, want only other", tt.path, m)
			}
		})
	}
}

func TestKVListPages(t *testing.T) {
	kv := testkit.NewMemKV()
	h := newKVApp(t, kv)
	want := []string{"p/1", "p/2", "p/3", "p/4", "p/5"}
	for _, k := range append([]string{"a", "q"}, want...) {
		if rec := do(h, "PUT", "/kv/"+k, "v"); rec.Code != 201 {
			t.Fatalf("PUT /kv/%s: status %d", k, rec.Code)
		}
	}
	var got []string
	var pages int
	after := ""
	for range 10 {
		rec := do(h, "GET", "/kv?prefix=p/&limit=2&after="+url.QueryEscape(after), "")
		if rec.Code != 200 {
			t.Fatalf("GET /kv page %d: status %d, body %q", pages, rec.Code, rec.Body.String())
		}
		var res handlers.ListResult
		if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
			t.Fatalf("GET /kv page %d: %v", pages, err)
		}
		pages++
		got = append(got, res.Keys...)
		if res.Next == "" {
			break
		}
		after = res.Next
	}
	if !slices.Equal(got, want) || pages != 3 {
		t.Errorf("pages of GET /kv?prefix=p/&limit=2 = %q in %d pages, want %q in 3", got, pages, want)
	}

	rec := do(h, "GET", "/kv", "")
	var res handlers.ListResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || len(res.Keys) != 7 || res.Next != "" {
		t.Errorf("GET /kv = %q (%v), want all 7 keys and no next", rec.Body.String(), err)
	}
}

// A failing store is a 500 (or 503 if transient) whose body does not leak
// the store's error, only where to look.
func TestKVStoreErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode int
		wantBody string
	}{
		{"broken", errors.New("disk I/O error: secret detail"), 500, "server log has the cause"},
		{"busy", fmt.Errorf("put: %w", handlers.ErrUnavailable), 503, "retry"},
		{"deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), 503, "retry"},
		// A store that does not import handlers says so with a method.
		{"closing", fmt.Errorf("get: %w", transient(true)), 503, "retry"},
		{"not transient after all", fmt.Errorf("get: %w", transient(false)), 500, "server log has the cause"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := testkit.NewMemKV()
			kv.SetErr(tt.err)
			h := newKVApp(t, kv)
			for _, r := range []struct{ method, target, body string }{
				{"GET", "/kv/a", ""}, {"PUT", "/kv/a", "v"}, {"DELETE", "/kv/a", ""}, {"GET", "/kv", ""},
			} {
				rec := do(h, r.method, r.target, r.body)
				if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantBody) {
					t.Errorf("%s %s with a %s store: %d %q, want %d and a body containing %q",
						r.method, r.target, tt.name, rec.Code, rec.Body.String(), tt.wantCode, tt.wantBody)
				}
				if strings.Contains(rec.Body.String(), "secret") {
					t.Errorf("%s %s: body %q leaks the store's error", r.method, r.target, rec.Body.String())
				}
				if ra := rec.Header().Get("Retry-After"); (tt.wantCode == 503) != (ra != "") {
					t.Errorf("%s %s: Retry-After = %q on a %d", r.method, r.target, ra, rec.Code)
				}
			}
		})
	}
}

// transient is an error of a store with its own idea of "unavailable".
type transient bool

func (e transient) Error() string     { return "store is closed" }
func (e transient) Unavailable() bool { return bool(e) }

func TestKVRoutesNeedAStore(t *testing.T) {
	h := newKVApp(t, nil)
	if rec := do(h, "GET", "/kv/a", ""); rec.Code != 404 {
		t.Errorf("GET /kv/a without a KV: status %d, want 404", rec.Code)
	}
}

// validKey is the rule the handlers enforce, written independently.
func validKey(k string) bool {
	if k == "" || k == "." || k == ".." || len(k) > handlers.MaxKeyLen || !utf8.ValidString(k) {
		return false
	}
	return !strings.ContainsFunc(k, unicode.IsControl)
}

// FuzzKVKey puts and gets arbitrary keys through the routes: a valid key
// round-trips with 201, an invalid one is a 400 that leaves the store
// alone, and nothing else happens: no key is cleaned or redirected into
// another, whatever its slashes and dots.
func FuzzKVKey(f *testing.F) {
	for _, k := range []string{
		"a", "users/42", "a b", "✓", "\x00", "a\nb", "\x7f", "\xc2\x85", "\xff", "a\xc3",
		"", "/", "a/../b", "./a", "a//b", "%2F", "?x", "#y", strings.Repeat("k", 513), "\uFFFD",
	} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		kv := testkit.NewMemKV()
		h := newKVApp(t, kv)
		req := httptest.NewRequest("PUT", "/kv/x", strings.NewReader("value"))
		req.URL = &url.URL{Path: "/kv/" + key}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == 201:
			if !validKey(key) {
				t.Fatalf("PUT of invalid key %q: status 201, want 400", key)
			}
			if got, ok := kv.Snapshot("")[key]; !ok || string(got) != "value" {
				t.Fatalf("PUT of key %q: store holds %q (%v), want value", key, got, ok)
			}
			// The Location names the same key, resolved as a client does.
			loc, err := url.Parse(rec.Header().Get("Location"))
			if err != nil {
				t.Fatalf("PUT of key %q: Location %q: %v", key, rec.Header().Get("Location"), err)
			}
			base := &url.URL{Scheme: "http", Host: "x", Path: "/kv/x/y"}
			if p := base.ResolveReference(loc).Path; p != "/kv/"+key {
				t.Fatalf("PUT of key %q: Location %q resolves to the path %q, another key", key, loc, p)
			}
			get := httptest.NewRequest("GET", "/kv/x", nil)
			get.URL = &url.URL{Path: "/kv/" + key}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, get)
			if rec.Code != 200 || rec.Body.String() != "value" {
				t.Fatalf("GET of key %q after PUT: %d %q, want 200 value", key, rec.Code, rec.Body.String())
			}
		case rec.Code == 400:
			if validKey(key) {
				t.Fatalf("PUT of valid key %q: status 400 (%s), want 201", key, rec.Body.String())
			}
			if m := kv.Snapshot(""); len(m) != 0 {
				t.Fatalf("PUT of invalid key %q changed the store: %q", key, m)
			}
			var e struct{ Error string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("PUT of invalid key %q: body %q, want a JSON error", key, rec.Body.String())
			}
		default:
			t.Fatalf("PUT of key %q: status %d (%s), want 201 or 400", key, rec.Code, rec.Body.String())
		}
	})
}

// FuzzKVList sends arbitrary query strings to GET /kv: the answer is 200
// with a list, or a 400 that says what to fix.
func FuzzKVList(f *testing.F) {
	for _, q := range []string{
		"", "limit=1", "limit=1000", "limit=1001", "limit=0", "limit=x", "prefix=a&after=a/1",
		"prefix=%00", "after=%FF", "limit=99999999999999999999", "limit=+5", "limit=05", "prefix=a&prefix=b",
	} {
		f.Add(q)
	}
	kv := testkit.NewMemKV()
	for _, k := range []string{"a", "a/1", "b"} {
		kv.Set(k, []byte("v"))
	}
	f.Fuzz(func(t *testing.T, query string) {
		h := newKVApp(t, kv)
		req := httptest.NewRequest("GET", "/kv", nil)
		req.URL.RawQuery = query
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			var res handlers.ListResult
			if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || res.Keys == nil {
				t.Fatalf("GET /kv?%s: body %q (%v), want a list", query, rec.Body.String(), err)
			}
		case 400:
			var e struct{ Error string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, "query parameter") {
				t.Fatalf("GET /kv?%s: body %q, want a JSON error naming the query parameter", query, rec.Body.String())
			}
		default:
			t.Fatalf("GET /kv?%s: status %d, want 200 or 400", query, rec.Code)
		}
	})
}
