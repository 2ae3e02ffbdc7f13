// Package testfiles holds file helpers for tests.
package testfiles

import (
	"os"
	"path/filepath"
	"testing"
)

// CopyDir copies the files of folder from (a model bundle, say) into a new
// temporary folder, which a test may then change, and returns it.
func CopyDir(t testing.TB, from string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
