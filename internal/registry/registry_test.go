package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gnld/internal/testfiles"
	"gnld/pipeline"
	"gnld/runtime"
)

const (
	tiny      = "../../models/testdata/tiny"
	tinyFloat = "../../models/testdata/tiny-float"
)

func newRegistry() *Registry {
	return New(runtime.Options{Threads: 1}, func(cameras int) int { return pipeline.Interpreters(0, cameras, 1) }, nil)
}

// One load per folder however often it is asked for, a fresh one once
// its files change, and the old one still scoring for a camera that has
// not switched yet.
func TestGetLoadsOncePerFolderAndAgainWhenItChanges(t *testing.T) {
	r := newRegistry()
	defer r.Close()
	dir := testfiles.CopyDir(t, tiny)
	a, err := r.Get(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	if a.Model.Interpreters() < 1 || a.Took.Total() <= 0 || a.Bundle.Meta.Version == "" {
		t.Fatalf("loaded %+v", a)
	}
	b, err := r.Get(dir, 2)
	if err != nil || b != a {
		t.Fatalf("second Get: %p %v; want the same load %p", b, err, a)
	}
	camera := a.Model.Pipeline() // a camera scoring with the first load
	defer camera.Close()
	later := time.Now().Add(time.Second)
	os.Chtimes(filepath.Join(dir, "model.json"), later, later)
	c, err := r.Get(dir, 2)
	if err != nil || c == a {
		t.Fatalf("Get after a change: %p %v; want a fresh load", c, err)
	}
	if err := WarmUp(camera); err != nil {
		t.Fatalf("the camera's pipeline on the replaced load: %v", err)
	}
	if r.Loaded(dir) != c {
		t.Fatal("Loaded does not give the fresh load")
	}
}

// A bundle that fails its checks leaves the load before it in place.
func TestLoadRefusedKeepsTheOldOne(t *testing.T) {
	r := newRegistry()
	defer r.Close()
	dir := testfiles.CopyDir(t, tiny)
	a, err := r.Load(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.ReadFile(filepath.Join(tinyFloat, "model.tflite"))
	os.WriteFile(filepath.Join(dir, "model.tflite"), f, 0o644) // hash no longer matches model.json
	if _, err := r.Load(dir, 1); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("Load of a bundle whose model does not match its hash: %v", err)
	}
	if r.Loaded(dir) != a {
		t.Fatal("a refused load replaced the good one")
	}
}

func TestProducts(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"b-2", "a_1"} {
		os.MkdirAll(filepath.Join(root, p), 0o755)
		os.WriteFile(filepath.Join(root, p, "model.json"), []byte("{}"), 0o644)
	}
	os.MkdirAll(filepath.Join(root, "empty"), 0o755)
	os.MkdirAll(filepath.Join(root, ".hidden"), 0o755)
	os.WriteFile(filepath.Join(root, ".hidden", "model.json"), []byte("{}"), 0o644)
	if got := strings.Join(Products(root), ","); got != "a_1,b-2" {
		t.Errorf("Products = %q, want a_1,b-2", got)
	}
	if dir, err := ProductDir(root, "a_1"); err != nil || dir != filepath.Join(root, "a_1") {
		t.Errorf("ProductDir(a_1) = %q, %v", dir, err)
	}
	for _, tc := range []struct{ product, want string }{
		{"../etc", "a product name is"}, {".hidden", "a product name is"}, {"a/b", "a product name is"},
		{"", "a product name is"}, {strings.Repeat("x", 65), "a product name is"},
		{"empty", "no bundle at"}, {"nope", "known products: a_1, b-2"},
	} {
		if _, err := ProductDir(root, tc.product); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ProductDir(%q): %v; want an error containing %q", tc.product, err, tc.want)
		}
	}
}
