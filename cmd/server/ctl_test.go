package main

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeControl serves answers as the control API would, for the token tok.
func fakeControl(t *testing.T, answers map[string]string) (addr, tokenFile string) {
	t.Helper()
	const tok = "0123456789abcdef0123456789abcdef"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+tok {
			http.Error(w, `{"error":"bad token"}`, http.StatusUnauthorized)
			return
		}
		body, ok := answers[r.Method+" "+r.URL.Path]
		if !ok {
			http.Error(w, `{"error":"new generation (pid 9) exited before it was ready: exit status 3"}`, http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	tokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.Listener.Addr().String(), tokenFile
}

// `server ctl -field` prints fields of the answer one a line, so that
// scripts/deploy.sh reads them without a JSON parser (issue 18: it read
// JSON with sed).
func TestCtlField(t *testing.T) {
	addr, tokenFile := fakeControl(t, map[string]string{
		"GET /status": `{"pid":42,"generation":3,"version":"v1.2.3","state":"serving","upgrades":{"succeeded":2,"failed":1},` +
			`"last_upgrade":null,"note":"a \"quoted\" value, with a comma","cache":{"entries":5}}` + "\n",
		"POST /upgrade": `{"pid":43,"version":"v2","generation":4,"duration_ms":12.5}` + "\n",
	})
	tests := []struct {
		verb, fields string
		want         string // stdout
		wantErr      string // a substring of the error; "" for none
	}{
		{"status", "pid", "42\n", ""},
		{"status", "pid,version,generation", "42\nv1.2.3\n3\n", ""},
		{"status", "upgrades.failed", "1\n", ""},
		{"status", "upgrades", `{"succeeded":2,"failed":1}` + "\n", ""},
		{"status", "last_upgrade,state", "\nserving\n", ""},
		{"status", "note", `a "quoted" value, with a comma` + "\n", ""},
		{"upgrade", "pid,version,duration_ms", "43\nv2\n12.5\n", ""},
		{"status", "pid,nope", "", `no field "nope" (it has cache, generation, last_upgrade, note, pid, state, upgrades, version)`},
		{"status", "state.x", "", `field "state" is not an object`},
		{"status", "upgrades.nope", "", `no field "upgrades.nope" (it has failed, succeeded)`},
		{"shutdown", "status", "", "exit status 3 (HTTP 502)"},
	}
	// The output format is set by flags only: a script's environment
	// cannot change what it reads.
	ctlEnv := env(map[string]string{"HANDOFF_JSON": "1", "HANDOFF_FIELD": "state"})
	for _, tt := range tests {
		var out bytes.Buffer
		args := []string{tt.verb, "-field", tt.fields, "-control-addr", addr, "-control-token-file", tokenFile}
		err := runCtl(t.Context(), args, ctlEnv, &out)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("server ctl %s -field %s: %v", tt.verb, tt.fields, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("server ctl %s -field %s: error %v, want one that says %q", tt.verb, tt.fields, err, tt.wantErr)
		}
		if out.String() != tt.want {
			t.Errorf("server ctl %s -field %s printed %q, want %q", tt.verb, tt.fields, out.String(), tt.want)
		}
	}

	err := runCtl(t.Context(), []string{"status", "-json", "-field", "pid", "-control-addr", addr, "-control-token-file", tokenFile}, env(nil), &bytes.Buffer{})
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-json and -field") {
		t.Errorf("server ctl status -json -field pid: %v, want a usage error", err)
	}
}

func TestCtlOutputFormatIsFlagOnly(t *testing.T) {
	addr, tokenFile := fakeControl(t, map[string]string{"GET /status": `{"pid":42,"version":"v1"}` + "\n"})
	var out bytes.Buffer
	err := runCtl(t.Context(), []string{"status", "-control-addr", addr, "-control-token-file", tokenFile},
		env(map[string]string{"HANDOFF_JSON": "true", "HANDOFF_FIELD": "pid"}), &out)
	if err != nil || !strings.HasPrefix(out.String(), "pid 42, generation 0, version v1") {
		t.Errorf("server ctl status with HANDOFF_JSON and HANDOFF_FIELD set: %v, printed %q; want the summary", err, out.String())
	}
}
