package handlers

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/rs/zerolog"
)

// MaxControlBody is the largest request body the control API reads. Its
// actions take no body; this only bounds what a client may send.
const MaxControlBody = 1 << 10

// Controller is what the control API needs of the process lifecycle.
type Controller interface {
	// Status is a JSON-encodable snapshot of the serving generation.
	Status() any
	// Upgrade starts a new generation and waits for it; it returns a
	// JSON-encodable description of it, or an error. A *ControlError
	// chooses the status code and body of the answer.
	Upgrade(ctx context.Context) (any, error)
	// Shutdown begins a graceful stop and returns at once.
	Shutdown()
}

// ControlError is an error the control API answers with Code and a JSON
// body of Msg and Details.
type ControlError struct {
	Code    int
	Msg     string
	Details map[string]any
}

func (e *ControlError) Error() string { return e.Msg }

// ControlOptions are the dependencies of the control API.
type ControlOptions struct {
	// Token is the bearer token every request must carry.
	Token []byte
	// Controller acts on the process.
	Controller Controller
	// Metrics serves GET /metrics.
	Metrics http.Handler
	// AllowedUIDs are the peer uids a unix socket connection may come from
	// (the server's own, and root). A request whose context carries no peer
	// uid (TCP) is not checked.
	AllowedUIDs []int
	Logger      zerolog.Logger
}

type peerUIDKey struct{}

// WithPeerUID returns ctx carrying the uid of the process at the other end
// of a unix socket connection (SO_PEERCRED), for the control API to check.
func WithPeerUID(ctx context.Context, uid int) context.Context {
	return context.WithValue(ctx, peerUIDKey{}, uid)
}

// authenticate refuses a request from a peer of another uid, a token in
// the URL, a missing or wrong bearer token, and a body over MaxControlBody.
// The token is compared in constant time and never logged; nor is the
// request's path or query, which may hold it: the log names the route.
func authenticate(o ControlOptions, rt *router) http.Handler {
	want := sha256.Sum256(o.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log := o.Logger.With().Str("method", r.Method).Str("route", rt.route(r)).Logger()
		if uid, ok := r.Context().Value(peerUIDKey{}).(int); ok && !containsInt(o.AllowedUIDs, uid) {
			log.Warn().Int("peer_uid", uid).Msg("control request refused: peer uid not allowed")
			writeError(w, http.StatusForbidden, fmt.Sprintf("peer uid %d may not use the control API: run as the server's user or root", uid))
			return
		}
		if tokenInURL(r.URL, o.Token) {
			log.Warn().Msg("control request refused: token in the URL")
			writeError(w, http.StatusBadRequest, "send the token in an Authorization: Bearer header, never in the URL (URLs end up in logs)")
			return
		}
		got, ok := bearer(r)
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			log.Warn().Bool("token_present", ok).Msg("control request refused: bad token")
			w.Header().Set("WWW-Authenticate", `Bearer realm="handoff-control"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <the contents of the control token file>")
			return
		}
		if _, ok := readBody(w, r, MaxControlBody, fmt.Sprintf("the control API takes no body; this one is over %d bytes", MaxControlBody)); !ok {
			return
		}
		log.Debug().Msg("control request")
		rt.ServeHTTP(w, r)
	})
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// tokenInURL reports whether u carries a token: a query parameter named
// like one (token, access_token, auth, ... in any case, however escaped),
// or the token itself anywhere in the path or query, raw or
// percent-decoded (once or more).
func tokenInURL(u *url.URL, token []byte) bool {
	for name := range u.Query() {
		if tokenParam(name) {
			return true
		}
	}
	if len(token) == 0 {
		return false
	}
	// url.Query skips a pair it cannot parse (a bad escape, a ;), so the
	// path and the whole query are also decoded as text, leniently.
	for _, s := range []string{u.Path, u.EscapedPath(), u.RawQuery} {
		// Decode until nothing changes (%2530 → %30 → 0). Each round
		// that changes s makes it shorter, so this ends.
		for {
			if strings.Contains(s, string(token)) {
				return true
			}
			d := lenientUnescape(s)
			if d == s {
				break
			}
			s = d
		}
	}
	return false
}

// tokenParam reports whether a query parameter name is one that carries a
// credential.
func tokenParam(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "token", "access_token", "auth", "bearer", "authorization", "apikey", "password", "secret":
		return true
	}
	return strings.HasSuffix(n, "token") || strings.HasSuffix(n, "_key")
}

// lenientUnescape decodes every valid %XX in s and leaves the rest as is,
// where url.PathUnescape gives up on the first bad escape.
func lenientUnescape(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func controlStatus(c Controller) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.Status())
	})
}

// controlUpgrade answers once the outcome is known: 200 with the new
// generation, or the error's status (409 while another upgrade runs, 502
// when the new generation failed).
func controlUpgrade(c Controller, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, err := c.Upgrade(r.Context())
		var ce *ControlError
		switch {
		case err == nil:
			writeJSON(w, http.StatusOK, res)
		case errors.As(err, &ce):
			body := map[string]any{"error": ce.Msg}
			for k, v := range ce.Details {
				body[k] = v
			}
			writeJSON(w, ce.Code, body)
		case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			writeError(w, http.StatusGatewayTimeout, "gave up waiting for the upgrade; it goes on: see GET /status")
		default:
			log.Error().Err(err).Msg("upgrade")
			writeError(w, http.StatusInternalServerError, err.Error())
		}
	})
}

func controlShutdown(c Controller, log zerolog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Info().Msg("shutdown requested through the control API")
		// The drain waits for this request, so the answer goes out first.
		c.Shutdown()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "stopping"})
	})
}
