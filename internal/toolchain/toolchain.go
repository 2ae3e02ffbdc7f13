// Package toolchain lets Go tests run the Python model toolchain
// (models/gnl) the way `make test` does: inside the build root, with
// models/ on PYTHONPATH. It is for tests only.
package toolchain

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Python runs `python3 ARGS...` from a test in a package one folder below
// the repository root and returns its stdout; a failure stops the test with
// Python's stderr and how to run it.
func Python(t testing.TB, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("python3", args...)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join("..", "models"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 %s: %v\n%s\n(these tests need the Python toolchain: run them with `make test-go`, inside tools/sidroot)",
			strings.Join(args, " "), err, stderr.String())
	}
	return out
}
