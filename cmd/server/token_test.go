package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/testkit"
	"golang.org/x/sys/unix"
)

// Issue 10 item 7: a control token file that another user could have
// planted or changed was adopted. It is a usage error (exit status 2)
// naming the file and the fix; a FIFO is refused, not waited on.
func TestLoadTokenRefusesFilesOthersCanChange(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef\n"
	tests := []struct {
		name    string
		make    func(t *testing.T, path string)
		wantErr string // "" for none
		usage   bool
	}{
		{"private", func(t *testing.T, path string) { writeToken(t, path, token, 0o600) }, "", false},
		{"readable by others", func(t *testing.T, path string) { writeToken(t, path, token, 0o644) }, "", false},
		{"group-writable", func(t *testing.T, path string) { writeToken(t, path, token, 0o660) }, "is writable by its group", true},
		{"world-writable", func(t *testing.T, path string) { writeToken(t, path, token, 0o666) }, "chmod 600", true},
		{"another user's", func(t *testing.T, path string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a file to another user")
			}
			writeToken(t, path, token, 0o600)
			if err := os.Chown(path, 65534, -1); err != nil {
				t.Fatal(err)
			}
		}, "chown", true},
		{"FIFO", func(t *testing.T, path string) {
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a regular file", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "control.token")
			tt.make(t, path)
			tok, err := loadToken(path, testkit.Logger(t))
			if tt.wantErr == "" {
				if err != nil || string(tok) != strings.TrimSpace(token) {
					t.Errorf("loadToken(%s file) = %q, %v; want the token", tt.name, tok, err)
				}
				return
			}
			var ue *usageError
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.wantErr) || errors.As(err, &ue) != tt.usage {
				t.Errorf("loadToken(%s file) = %v; want an error (usage error: %v) naming %s and containing %q", tt.name, err, tt.usage, path, tt.wantErr)
			}
		})
	}
}

func writeToken(t *testing.T, path, token string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(token), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}
