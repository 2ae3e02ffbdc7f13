// Package mtd finds the Magnetic Tile Defects data set that tests read
// their real images from: $MTD, else ../shared/data/mtd beside the
// checkout (the layout its README describes). Tests skip, saying how to
// point at it, where it is missing.
package mtd

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Dir is the data set's folder, with test/good in it; t skips without it.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("MTD")
	if dir == "" {
		_, self, _, _ := runtime.Caller(0) // <checkout>/internal/mtd/mtd.go
		dir = filepath.Join(filepath.Dir(self), "..", "..", "..", "shared", "data", "mtd")
	}
	if _, err := os.Stat(filepath.Join(dir, "test", "good")); err != nil {
		t.Skipf("MTD data not found (%v); set MTD=/path/to/mtd", err)
	}
	return dir
}
