package handlers

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// jsonType is the Content-Type of every JSON answer. One slice serves
// them all: net/http copies a header's values when it writes the header,
// and nothing here changes a value in place, so sharing it saves an
// allocation per answer.
var jsonType = []string{"application/json"}

// writeJSON answers v as JSON with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSONBytes(w, code, append(b, '\n'))
}

// writeJSONBytes answers body, which is JSON, with status code.
func writeJSONBytes(w http.ResponseWriter, code int, body []byte) {
	w.Header()["Content-Type"] = jsonType
	w.WriteHeader(code)
	w.Write(body)
}

// fixedJSON returns a handler that answers v with status code, encoded
// once rather than per request: for answers that never change, such as
// the health checks probed many times a second.
func fixedJSON(code int, v any) http.Handler {
	body, err := json.Marshal(v)
	if err != nil {
		// Not for the values it is given (strings, numbers, a time); were
		// one to fail, every answer would say so, as writeJSON's do.
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, code, v) })
	}
	body = append(body, '\n')
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeJSONBytes(w, code, body) })
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
