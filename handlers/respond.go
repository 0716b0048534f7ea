package handlers

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// writeJSON answers v as JSON with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// errorBody is the JSON shape of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

// writeError answers a JSON error that says what to fix.
func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// readBody reads r's body, at most limit bytes, or answers and returns
// false: 413 with the error tooBig for a body over limit, 400 for one that
// cannot be read.
//
// A body whose Content-Length is over limit is refused unread. Then no
// "100 Continue" goes out to a client that sent "Expect: 100-continue"
// (net/http sends it on the first read), so the client never sends the
// body and reads the 413; had the body been read up to limit, the
// connection would close with the rest of it unread, and the kernel
// would answer the client's next bytes with a reset that can destroy the
// 413 before it is read. Over HTTP/1 the connection is closed after the
// answer (Connection: close), since the body was not read; over HTTP/2
// only the stream ends.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, tooBig string) ([]byte, bool) {
	if r.ContentLength > limit {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		writeError(w, http.StatusRequestEntityTooLarge, tooBig)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		writeError(w, http.StatusRequestEntityTooLarge, tooBig)
		return nil, false
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "read request body: "+err.Error())
		return nil, false
	}
	return body, true
}
