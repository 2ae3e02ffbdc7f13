package pipeline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/runtime"
)

// FuzzBundle gives arbitrary model.json bytes to the whole load path
// beside the tiny bundle's model.tflite, as gnld loads a bundle at
// start-up and on reload: models.Load, then New, then one real frame (the
// warm-up). Each step may refuse the bundle with an error; what Load
// accepts must not crash OpenCV or TFLite, nor hang. Seeds: the tiny bundle's model.json (which
// matches its model) and the default bundle's.
func FuzzBundle(f *testing.F) {
	for _, p := range []string{"../models/testdata/tiny/model.json", "../models/default/model.json"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	frame := gocv.IMRead(testImages(f)[0], gocv.IMReadColor)
	if frame.Empty() {
		f.Fatal("cannot read an MTD image")
	}
	f.Cleanup(func() { frame.Close() })
	dir := f.TempDir()
	model, err := filepath.Abs("../models/testdata/tiny/model.tflite")
	if err != nil {
		f.Fatal(err)
	}
	if err := os.Symlink(model, filepath.Join(dir, "model.tflite")); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, models.MetaFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := models.Load(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the bundle's files", err)
			}
			return
		}
		p, err := New(b, runtime.Options{Delegate: runtime.Builtin})
		if err != nil {
			return // the model does not match model.json: said so
		}
		defer p.Close()
		// A score that is not finite is fine here: gnld's warm-up refuses
		// the bundle then (cmd/gnld warmUp).
		if _, err := p.Process(frame); err != nil {
			t.Fatalf("bundle loaded, but the warm-up frame fails: %v", err)
		}
	})
}
