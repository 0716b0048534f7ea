package handlers

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// MaxSlow is the longest delay /slow accepts, in milliseconds.
const MaxSlow = 60000

// MaxEchoBody is the largest body /echo accepts.
const MaxEchoBody = 1 << 20

// Root answers who is serving: pid, generation, version and start time.
func Root(info Info) http.Handler {
	return fixedJSON(http.StatusOK, info)
}

// Healthz answers 200 for as long as the process runs.
func Healthz() http.Handler {
	return fixedJSON(http.StatusOK, map[string]string{"status": "ok"})
}

// Readyz answers 200 while the generation should get traffic, and 503 from
// the moment it stops or starts to drain.
func Readyz(lc Lifecycle) http.Handler {
	ready := fixedJSON(http.StatusOK, map[string]string{"status": "ready"})
	notReady := fixedJSON(http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !lc.IsReady() {
			notReady.ServeHTTP(w, r)
			return
		}
		ready.ServeHTTP(w, r)
	})
}

// Slow answers after ?ms=N milliseconds, 0 ≤ N ≤ MaxSlow. It stands for
// any request that is in flight when a restart begins.
func Slow(info Info) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || n < 0 || n > MaxSlow {
			writeError(w, http.StatusBadRequest,
				fmt.Sprintf("query parameter ms must be a whole number of milliseconds from 0 to %d", MaxSlow))
			return
		}
		t := time.NewTimer(time.Duration(n) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return // the client left; nobody reads an answer
		}
		writeJSON(w, http.StatusOK, map[string]any{"slept_ms": n, "pid": info.PID, "generation": info.Generation})
	})
}

// Echo answers with the request body, under the request's Content-Type.
// A body over MaxEchoBody is a 413, refused unread when its
// Content-Length says so (see readBody).
func Echo() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r, MaxEchoBody,
			fmt.Sprintf("request body is larger than %d bytes; send at most that", MaxEchoBody))
		if !ok {
			return
		}
		ct := r.Header.Get("Content-Type")
		if ct == "" {
			ct = "application/octet-stream"
		}
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})
}
