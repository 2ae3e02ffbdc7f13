package runtime

import (
	"os"
	"path/filepath"
	"testing"
)

// modelSeeds are the seeds of the model fuzz targets: the repository's
// models, whole and cut in half.
func modelSeeds(f *testing.F) {
	for _, p := range []string{tinyInt8, tinyFloat, futureOp, defaultModel} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		f.Add(data[:len(data)/2])
	}
	f.Add([]byte("\x1c\x00\x00\x00TFL3"))
}

// FuzzNew loads arbitrary bytes as a model file, as gnld loads a bundle's
// model.tflite, with gnld's default delegate (XNNPACK), and runs the model
// once (gnld's warm-up frame) when it loads. New must return an error or
// a working interpreter; a crash in TFLite's C code ends the fuzzing
// process, which go test reports with the input.
func FuzzNew(f *testing.F) {
	modelSeeds(f)
	path := filepath.Join(f.TempDir(), "model.tflite")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ip, err := New(path, Options{})
		if err != nil {
			return
		}
		defer ip.Close()
		ip.Invoke() // an error is fine; a crash is not
	})
}

// FuzzVerifyModel runs gnld's own flatbuffer checks alone (thousands of
// times faster than FuzzNew): they must never panic, whatever the bytes.
func FuzzVerifyModel(f *testing.F) {
	modelSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		verifyModel(data)
	})
}
