package atomicfile_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/handoff-go/handoff/internal/atomicfile"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, tt := range []struct {
		data string
		perm os.FileMode
	}{
		{"first", 0o600},
		{"second, longer than the first", 0o644}, // replaces it
	} {
		if err := atomicfile.WriteFile(t.Context(), path, []byte(tt.data), tt.perm); err != nil {
			t.Fatalf("WriteFile(%q): %v", tt.data, err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != tt.data {
			t.Errorf("after WriteFile(%q): file holds %q (%v)", tt.data, b, err)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != tt.perm {
			t.Errorf("after WriteFile(%q, %v): mode %v (%v), want %v", tt.data, tt.perm, fi.Mode().Perm(), err, tt.perm)
		}
	}
	assertOnly(t, dir, "f")
}

// A writer whose context ended leaves the old file, and no temporary one.
func TestWriteFileCancelled(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := atomicfile.WriteFile(t.Context(), path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := atomicfile.WriteFile(ctx, path, []byte("new"), 0o600); err == nil {
		t.Error("WriteFile with a cancelled context = nil error, want one")
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("file after a cancelled WriteFile holds %q, want old", b)
	}
	assertOnly(t, dir, "f")
}

func TestWriteFileNoDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "f")
	err := atomicfile.WriteFile(t.Context(), path, nil, 0o600)
	if err == nil {
		t.Fatalf("WriteFile(%s) in a missing directory = nil error", path)
	}
}

func assertOnly(t *testing.T, dir, name string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != name {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want only %q: a temporary file was left behind", names, name)
	}
}
