package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"
)

// Limits of the key-value API.
const (
	// MaxKeyLen is the longest key, in bytes of UTF-8.
	MaxKeyLen = 512
	// MaxValueSize is the largest value PUT /kv/{key} accepts, in bytes.
	MaxValueSize = 64 << 10
	// DefaultListLimit is how many keys GET /kv answers without ?limit.
	DefaultListLimit = 100
	// MaxListLimit is the largest ?limit GET /kv accepts.
	MaxListLimit = 1000
)

// ErrUnavailable marks a KV error that is transient, such as a database
// that stayed locked past its busy timeout or a store that is closing: it
// is answered 503 with Retry-After, where any other error is a 500. A KV
// wraps it, or, so as not to import this package, returns an error whose
// chain holds one with a method Unavailable() bool that returns true.
const ErrUnavailable = kvError("key-value store is temporarily unavailable")

type kvError string

func (e kvError) Error() string { return string(e) }

// Unavailable reports that the error is transient.
func (e kvError) Unavailable() bool { return true }

// unavailable reports whether err is transient, as ErrUnavailable says.
func unavailable(err error) bool {
	var u interface{ Unavailable() bool }
	return errors.As(err, &u) && u.Unavailable()
}

// KV is the key-value store the /kv routes serve. The keys the handlers
// pass are non-empty UTF-8 text without control characters, at most
// MaxKeyLen bytes; prefix and after may also be empty. Its methods must be safe for concurrent
// use, and a Put or Delete must return only once its change is durable:
// the handlers acknowledge it as soon as they return.
type KV interface {
	// Get returns key's value and whether key exists.
	Get(ctx context.Context, key string) (value []byte, ok bool, err error)
	// Put sets key's value and reports whether key is new.
	Put(ctx context.Context, key string, value []byte) (created bool, err error)
	// Delete removes key and reports whether it existed.
	Delete(ctx context.Context, key string) (existed bool, err error)
	// List returns up to limit keys in byte order that start with prefix
	// and sort after after, and the cursor of the next page: the after of
	// the next call, or "" if there is no more.
	List(ctx context.Context, prefix, after string, limit int) (keys []string, next string, err error)
}

// ListResult is the answer of GET /kv.
type ListResult struct {
	Keys []string `json:"keys"`
	// Next is the ?after of the next page, or "" after the last page.
	Next string `json:"next"`
}

// Keys in paths. The key of /kv/{key} is the percent-decoded rest of the
// path, byte for byte: it is never cleaned, so /kv/a//b, /kv/a/../b and
// /kv/a/ name the keys "a//b", "a/../b" and "a/", each its own key (not
// "a/b", "b" or "a"). A %2F is a /: /kv/a%2Fb names the key "a/b", the same
// key as /kv/a/b, so a client may escape a whole key with one
// url.PathEscape. keyPath writes a key's path back. The keys "." and ".."
// are refused (400): no URL names them that every client leaves alone
// (browsers resolve %2E and %2E%2E as dot segments too).

// keyPath returns the path that names key: /kv/ and the key, escaped so
// that a client that requests it names the same key. Its slashes stay as
// they are (/kv/users/42) unless a client or proxy could remove or merge
// a segment: an empty one (a//b, or a key that starts or ends with /) or
// a dot segment (. or ..), which RFC 3986 clients resolve away. Then the
// key's slashes are escaped too (/kv/a%2F..%2Fb), so that it is one
// segment that no client rewrites.
func keyPath(key string) string {
	segs := strings.Split(key, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return "/kv/" + url.PathEscape(key)
		}
	}
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return "/kv/" + strings.Join(segs, "/")
}

// KVGet answers GET /kv/{key}: 200 with the value as
// application/octet-stream, or 404.
func KVGet(kv KV, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := pathKey(w, r)
		if !ok {
			return
		}
		v, found, err := kv.Get(r.Context(), key)
		if err != nil {
			kvFailed(w, r, log, "get", err)
			return
		}
		if !found {
			writeError(w, http.StatusNotFound, "key not found")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(v)))
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		w.Write(v)
	})
}

// KVPut answers PUT /kv/{key}: the body, at most MaxValueSize bytes,
// becomes key's value. 201 if key is new, 204 if its value was replaced,
// in both cases only once the store has committed the change.
func KVPut(kv KV, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := pathKey(w, r)
		if !ok {
			return
		}
		body, ok := readBody(w, r, MaxValueSize,
			fmt.Sprintf("value is larger than %d bytes; send at most that", MaxValueSize))
		if !ok {
			return
		}
		created, err := kv.Put(r.Context(), key, body)
		if err != nil {
			kvFailed(w, r, log, "put", err)
			return
		}
		if !created {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Location", keyPath(key))
		w.WriteHeader(http.StatusCreated)
	})
}

// KVDelete answers DELETE /kv/{key}: 204 once deleted, 404 if absent.
func KVDelete(kv KV, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := pathKey(w, r)
		if !ok {
			return
		}
		existed, err := kv.Delete(r.Context(), key)
		if err != nil {
			kvFailed(w, r, log, "delete", err)
			return
		}
		if !existed {
			writeError(w, http.StatusNotFound, "key not found")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// KVList answers GET /kv?prefix=P&after=CURSOR&limit=N with a ListResult:
// up to N (default DefaultListLimit, at most MaxListLimit) keys that start
// with P, after CURSOR, in byte order. Each page's next is the next
// page's after.
func KVList(kv KV, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		prefix, after := q.Get("prefix"), q.Get("after")
		for _, p := range []struct{ name, v string }{{"prefix", prefix}, {"after", after}} {
			if p.v == "" {
				continue
			}
			if msg := checkKey(p.v); msg != "" {
				writeError(w, http.StatusBadRequest, "query parameter "+p.name+": "+msg)
				return
			}
		}
		limit := DefaultListLimit
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > MaxListLimit {
				writeError(w, http.StatusBadRequest,
					fmt.Sprintf("query parameter limit must be a whole number from 1 to %d", MaxListLimit))
				return
			}
			limit = n
		}
		keys, next, err := kv.List(r.Context(), prefix, after, limit)
		if err != nil {
			kvFailed(w, r, log, "list", err)
			return
		}
		if keys == nil {
			keys = []string{} // [] rather than null
		}
		writeJSON(w, http.StatusOK, ListResult{Keys: keys, Next: next})
	})
}

// pathKey returns the request's {key}, or answers 400 and false.
func pathKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	if key == "" {
		writeError(w, http.StatusBadRequest, "key is empty; put it after /kv/, as in /kv/users/42 (GET /kv lists keys)")
		return "", false
	}
	if msg := checkKey(key); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return "", false
	}
	if key == "." || key == ".." {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("key %q cannot be named in a URL (clients resolve it as a dot segment); use another key", key))
		return "", false
	}
	return key, true
}

// checkKey returns what is wrong with a non-empty key, or "". Keys are
// text, so that they print in logs and JSON unchanged: valid UTF-8 (after
// percent-decoding) without control characters, at most MaxKeyLen bytes.
func checkKey(key string) string {
	if len(key) > MaxKeyLen {
		return fmt.Sprintf("key is %d bytes long; use at most %d bytes", len(key), MaxKeyLen)
	}
	for i, c := range key {
		if c == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(key[i:]); size == 1 {
				return fmt.Sprintf("key is not valid UTF-8 (byte %d after percent-decoding); percent-encode UTF-8 text only", i)
			}
		}
		if unicode.IsControl(c) {
			return fmt.Sprintf("key has control character %U at byte %d; remove it", c, i)
		}
	}
	return ""
}

// kvFailed answers a store error without its details, which are logged.
func kvFailed(w http.ResponseWriter, r *http.Request, log zerolog.Logger, op string, err error) {
	if r.Context().Err() != nil {
		return // the client left; nobody reads an answer
	}
	if unavailable(err) || errors.Is(err, context.DeadlineExceeded) {
		log.Warn().Err(err).Str("op", op).Msg("kv store unavailable")
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "key-value store is busy; retry in a moment")
		return
	}
	// A store that fails for another reason (disk full, corrupt file)
	// needs a person.
	log.Error().Err(err).Str("op", op).Msg("kv store failed")
	writeError(w, http.StatusInternalServerError, "key-value store failed; the server log has the cause")
}
