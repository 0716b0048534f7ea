package upgrade

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"
)

// Regression test: the tracking wrapper allocated a drainWriter for every
// request. A request on a known connection, while not draining, must
// allocate nothing in the wrapper.
func TestTrackedRequestAllocatesNothing(t *testing.T) {
	body := []byte("ok\n")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})}
	s := HTTP(srv).(*httpServer)
	s.hook(serverHooks{log: zerolog.Nop()})
	c1, c2 := net.Pipe()
	defer c2.Close()
	tc := s.t.add(c1)
	defer tc.Close()
	r := httptest.NewRequest("GET", "/", nil)
	r = r.WithContext(srv.ConnContext(r.Context(), tc))
	w := &headerOnlyWriter{h: http.Header{}}
	srv.Handler.ServeHTTP(w, r) // the connection's first request makes its writer
	if n := testing.AllocsPerRun(100, func() { srv.Handler.ServeHTTP(w, r) }); n != 0 {
		t.Errorf("a request through the tracking wrapper allocates %v objects, want 0", n)
	}
	if w.code != http.StatusOK || w.n != len(body) {
		t.Errorf("wrapped handler answered %d with %d bytes, want 200 with %d", w.code, w.n, len(body))
	}
}

// headerOnlyWriter is a ResponseWriter that keeps nothing but the status
// and the byte count.
type headerOnlyWriter struct {
	h    http.Header
	code int
	n    int
}

func (w *headerOnlyWriter) Header() http.Header  { return w.h }
func (w *headerOnlyWriter) WriteHeader(code int) { w.code = code }
func (w *headerOnlyWriter) Write(b []byte) (int, error) {
	w.n = len(b)
	return len(b), nil
}
