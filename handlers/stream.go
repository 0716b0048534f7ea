package handlers

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"
)

// maxReplay bounds how many missed SSE ticks a resuming client is sent.
const maxReplay = 300

// maxWSMessage bounds a WebSocket message the echo accepts.
const maxWSMessage = 1 << 20

// tickEvent is the data of one SSE tick.
type tickEvent struct {
	Tick       int64 `json:"tick"`
	Generation int   `json:"generation"`
	PID        int   `json:"pid"`
}

// Events is a Server-Sent Events stream that ticks every second. A tick's
// id is its Unix second, the same in every generation, so a client that
// reconnects with Last-Event-ID resumes without a gap: the ticks it missed
// are sent first (at most maxReplay of them). When the generation begins to
// drain, the stream sends a final "reconnect" event and ends, and the
// client's reconnection reaches the next generation.
func Events(info Info, lc Lifecycle, now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var last int64 = -1
		if v := r.Header.Get("Last-Event-ID"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				writeError(w, http.StatusBadRequest, "Last-Event-ID must be the id of a tick (a whole number)")
				return
			}
			last = n
		}
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Time{}) // a stream outlives the server's WriteTimeout
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		if r.ProtoMajor == 1 {
			// The stream ends only to move the client to another
			// generation, so its connection is not kept alive after it.
			// (On HTTP/2 this header would end the whole connection.)
			h.Set("Connection", "close")
		}
		w.WriteHeader(http.StatusOK)

		send := func(tick int64) error {
			b, _ := json.Marshal(tickEvent{Tick: tick, Generation: info.Generation, PID: info.PID})
			_, err := fmt.Fprintf(w, "id: %d\nevent: tick\ndata: %s\n\n", tick, b)
			return err
		}
		cur := now().Unix()
		if last >= 0 && last < cur {
			from := max(last+1, cur-maxReplay+1)
			for t := from; t < cur; t++ {
				if send(t) != nil {
					return
				}
			}
		}
		next := cur
		if last >= cur {
			next = last + 1
		}
		for {
			if now().Unix() >= next {
				if send(next) != nil || rc.Flush() != nil {
					return
				}
				next++
				continue
			}
			rc.Flush()
			wait := time.Until(time.Unix(next, 0))
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			case <-lc.Draining():
				t.Stop()
				// retry asks for a quick reconnection; the id is the last
				// tick sent, so the resumed stream starts right after it.
				fmt.Fprintf(w, "event: reconnect\nretry: 100\ndata: {\"reason\":\"server restarting\",\"generation\":%d}\n\n", info.Generation)
				rc.Flush()
				return
			}
		}
	})
}

// WebSocket echoes every message back. When the generation begins to drain
// it closes the connection with status 1012 (service restart), and the
// client's reconnection reaches the next generation.
func WebSocket(lc Lifecycle, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// The hijacked connection keeps the deadlines of this request.
		rc.SetReadDeadline(time.Time{})
		rc.SetWriteDeadline(time.Time{})
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			log.Debug().Err(err).Msg("websocket accept")
			return // Accept answered the client
		}
		c.SetReadLimit(maxWSMessage)
		ctx := r.Context()
		done := make(chan error, 1)
		go func() { // ends when a read or write fails, which Close causes
			for {
				typ, msg, err := c.Read(ctx)
				if err != nil {
					done <- err
					return
				}
				if err := c.Write(ctx, typ, msg); err != nil {
					done <- err
					return
				}
			}
		}()
		select {
		case err := <-done:
			if s := websocket.CloseStatus(err); s == -1 && !strings.Contains(err.Error(), "EOF") {
				log.Debug().Err(err).Msg("websocket ended")
			}
			c.CloseNow()
		case <-lc.Draining():
			c.Close(websocket.StatusServiceRestart, "server restarting: reconnect")
			<-done
		}
	})
}
