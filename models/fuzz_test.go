package models

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad gives Load arbitrary model.json bytes beside the tiny bundle's
// model.tflite: it must return an error that names model.json, or a
// bundle whose model lies inside its folder; never panic. Seeds: the
// repository's model.json files and the cut-down ones of TestBundleErrors'
// kind.
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{tiny, "testdata/tiny-float", "default"} {
		data, err := os.ReadFile(filepath.Join(dir, MetaFile))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{"", "{}", "null", "[]", `{"format_version": 1}`, `{"input": {"mean": [1e999]}}`} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	model, err := filepath.Abs(filepath.Join(tiny, "model.tflite"))
	if err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink(model, filepath.Join(dir, "model.tflite")); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, MetaFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := Load(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the bundle's files", err)
			}
			return
		}
		if filepath.Dir(b.ModelPath) != dir {
			t.Fatalf("model file %q outside the bundle %s", b.ModelPath, dir)
		}
	})
}
