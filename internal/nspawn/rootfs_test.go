package nspawn

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCacheDir(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"HANDOFF_CACHE first", map[string]string{"HANDOFF_CACHE": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/c"},
		{"then XDG_CACHE_HOME", map[string]string{"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/handoff"},
		{"then HOME", map[string]string{"HOME": "/h"}, "/h/.cache/handoff"},
		{"none", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CacheDir(func(k string) string { return tc.env[k] })
			if got != tc.want {
				t.Errorf("CacheDir = %q, want %q", got, tc.want)
			}
			if (err != nil) != (tc.want == "") {
				t.Errorf("CacheDir error = %v", err)
			}
		})
	}
}

// fakeBuild stands for debootstrap: it writes one file, or fails.
func fakeBuild(calls *int, content string, fail error) func(string) error {
	return func(tmp string) error {
		*calls++
		if err := os.WriteFile(filepath.Join(tmp, "content"), []byte(content), 0o644); err != nil {
			return err
		}
		return fail
	}
}

func content(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEnsureBuildsOnceAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rootfs-x")
	calls := 0
	for i, wantBuilt := range []bool{true, false, false} {
		built, err := ensure(dir, stamp("x"), fakeBuild(&calls, "one", nil))
		if err != nil {
			t.Fatal(err)
		}
		if built != wantBuilt {
			t.Errorf("run %d: built = %v, want %v", i, built, wantBuilt)
		}
	}
	if calls != 1 {
		t.Errorf("build ran %d times over 3 runs, want 1", calls)
	}
	if got := content(t, dir); got != "one" {
		t.Errorf("content = %q, want %q", got, "one")
	}
}

func TestEnsureNeverUsesAFailedBuild(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rootfs-x")
	calls := 0
	boom := errors.New("network down")
	if _, err := ensure(dir, stamp("x"), fakeBuild(&calls, "half", boom)); !errors.Is(err, boom) {
		t.Fatalf("failed build: err = %v, want %v", err, boom)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed build, %s: stat err = %v, want it absent", dir, err)
	}
	leftovers, _ := filepath.Glob(dir + ".tmp-*")
	if len(leftovers) > 0 {
		t.Errorf("a failed build left %v", leftovers)
	}
	// A build interrupted for good (the process killed) leaves its
	// directory; the next build removes it and does not use it.
	if err := os.MkdirAll(dir+".tmp-killed/etc", 0o755); err != nil {
		t.Fatal(err)
	}
	built, err := ensure(dir, stamp("x"), fakeBuild(&calls, "whole", nil))
	if err != nil || !built {
		t.Fatalf("second build: built %v, err %v; want a build", built, err)
	}
	if got := content(t, dir); got != "whole" {
		t.Errorf("content = %q, want %q", got, "whole")
	}
	if _, err := os.Stat(dir + ".tmp-killed"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the interrupted build's directory is still there (stat err = %v)", err)
	}
}

func TestEnsureRebuildsWhenTheRecipeChanges(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rootfs-x")
	calls := 0
	if _, err := ensure(dir, "recipe 1\n", fakeBuild(&calls, "old", nil)); err != nil {
		t.Fatal(err)
	}
	built, err := ensure(dir, "recipe 2\n", fakeBuild(&calls, "new", nil))
	if err != nil || !built {
		t.Fatalf("new recipe: built %v, err %v; want a rebuild", built, err)
	}
	if got := content(t, dir); got != "new" {
		t.Errorf("content = %q, want %q", got, "new")
	}
	if old, _ := filepath.Glob(dir + ".old-*"); len(old) > 0 {
		t.Errorf("the replaced root file system is still there: %v", old)
	}
}

func TestStampNamesTheRecipe(t *testing.T) {
	if stamp("trixie") == stamp("bookworm") {
		t.Error("two suites share a stamp: one's cache would pass for the other's")
	}
}

func TestCgroupOwner(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"handoff-nspawn-1234-7", 1234, true},
		{"handoff-nspawn-1234", 0, false},
		{"handoff-nspawn-x-7", 0, false},
		{"payload", 0, false},
		{"system.slice", 0, false},
	} {
		pid, ok := cgroupOwner(tc.name)
		if pid != tc.pid || ok != tc.ok {
			t.Errorf("cgroupOwner(%q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}

// removeTree removes a tree of empty directories deepest first, as a
// cgroup tree must be (a cgroup directory is removed with rmdir alone).
func TestRemoveTree(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cg")
	for _, d := range []string{"payload/system.slice/x.service", "payload/init.scope", "supervisor"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeTree(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: stat err = %v, want it removed", root, err)
	}
	if err := removeTree(root); err != nil {
		t.Errorf("removing a tree that is gone: %v, want nil", err)
	}
}
