package models

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const tiny = "testdata/tiny"

func TestLoadTiny(t *testing.T) {
	for _, dir := range []string{"testdata/tiny", "testdata/tiny-float"} {
		b, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if b.Meta.Input.Width != 160 || b.Meta.Input.Height != 128 || b.Meta.Output.Width != 40 || b.Meta.Output.Height != 32 {
			t.Errorf("%s: sizes %+v %+v", dir, b.Meta.Input, b.Meta.Output)
		}
		if b.ModelPath != filepath.Join(dir, "model.tflite") {
			t.Errorf("ModelPath %q", b.ModelPath)
		}
	}
}

// copyBundle copies the tiny bundle to a temp dir, letting edit change the
// decoded model.json and model.tflite's bytes.
func copyBundle(t *testing.T, editMeta func(map[string]any), editModel func([]byte) []byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	data, err := os.ReadFile(filepath.Join(tiny, MetaFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		t.Fatal(err)
	}
	if editMeta != nil {
		editMeta(meta)
	}
	data, _ = json.Marshal(meta)
	model, err := os.ReadFile(filepath.Join(tiny, "model.tflite"))
	if err != nil {
		t.Fatal(err)
	}
	if editModel != nil {
		model = editModel(model)
	}
	if model != nil {
		if err := os.WriteFile(filepath.Join(dir, "model.tflite"), model, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, MetaFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadErrors(t *testing.T) {
	input := func(m map[string]any) map[string]any { return m["input"].(map[string]any) }
	cases := []struct {
		name      string
		meta      func(map[string]any)
		model     func([]byte) []byte
		want      []string // substrings of the error, besides the fix
		modelFile bool     // the error names model.tflite rather than model.json
	}{
		{"missing mean", func(m map[string]any) { delete(input(m), "mean") }, nil,
			[]string{`missing "input.mean"`}, false},
		{"missing threshold", func(m map[string]any) { delete(m["threshold"].(map[string]any), "value") }, nil,
			[]string{`missing "threshold.value"`}, false},
		{"bad layout", func(m map[string]any) { input(m)["layout"] = "NCHW" }, nil,
			[]string{`"input.layout" is NCHW`}, false},
		{"int8 without scale", func(m map[string]any) {
			input(m)["quantization"] = map[string]any{"scale": 0, "zero_point": 0}
		}, nil, []string{`"input.quantization.scale"`}, false},
		{"threshold zero", func(m map[string]any) { m["threshold"].(map[string]any)["value"] = 0 }, nil,
			[]string{`"threshold.value" is 0`}, false},
		{"future format", func(m map[string]any) { m["format_version"] = 2 }, nil,
			[]string{`"format_version" is 2`}, false},
		{"truncated model", nil, func(b []byte) []byte { return b[:len(b)/2] },
			[]string{"SHA-256"}, true},
		{"missing model", nil, func([]byte) []byte { return nil },
			[]string{"no such file"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyBundle(t, c.meta, c.model)
			_, err := Load(dir)
			if err == nil {
				t.Fatal("no error")
			}
			file := filepath.Join(dir, MetaFile)
			if c.modelFile {
				file = filepath.Join(dir, "model.tflite")
			}
			for _, w := range append(c.want, file+":", "gnl export") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoadNoBundle(t *testing.T) {
	_, err := Load(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "model.json: no bundle here") {
		t.Fatalf("got %v", err)
	}
}

// drift.json is optional: without it Drift is nil. The default bundle has
// one; a broken one is an error naming the file and the fix.
func TestLoadDrift(t *testing.T) {
	if b, err := Load(tiny); err != nil || b.Drift != nil {
		t.Fatalf("tiny bundle (no drift.json): %v, drift %v", err, b.Drift)
	}
	b, err := Load("default")
	if err != nil {
		t.Fatal(err)
	}
	// A thumbnail per training image and per view of the drift policy (gnl/drift.py).
	if b.Drift == nil || b.Drift.Images < 2 || len(b.Drift.Thumbnails) != b.Drift.Images+b.Drift.PolicyViews {
		t.Fatalf("default bundle: drift %+v", b.Drift)
	}
	for _, name := range append(DriftImageFeatures, DriftScore) {
		if f := b.Drift.Features[name]; !(f.Scale > 0) || f.Count < 2 {
			t.Errorf("default drift.json %s: %+v", name, f)
		}
	}
	good, err := os.ReadFile(filepath.Join("default", DriftFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		edit func(map[string]any)
		want string
	}{
		{func(m map[string]any) { m["format_version"] = 9 }, "format_version is 9"},
		{func(m map[string]any) { delete(m["features"].(map[string]any), "sharpness") }, "features.sharpness missing"},
		{func(m map[string]any) { m["thumbnails"].([]any)[3] = "zz" }, "thumbnails[3]"},
		{func(m map[string]any) {
			m["features"].(map[string]any)["layout"].(map[string]any)["scale"] = 0
		}, "features.layout.scale is 0"},
		{func(m map[string]any) { m["orientation_mean"] = []any{1.0} }, "orientation_mean has 1 values"},
		{nil, "not valid drift statistics"},
	} {
		dir := copyBundle(t, nil, nil)
		data := []byte("{not json")
		if c.edit != nil {
			var m map[string]any
			json.Unmarshal(good, &m)
			c.edit(m)
			data, _ = json.Marshal(m)
		}
		os.WriteFile(filepath.Join(dir, DriftFile), data, 0o644)
		_, err := Load(dir)
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, DriftFile)+": ") ||
			!strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "gnl drift-stats") {
			t.Errorf("got %v, want an error naming %s, %q and the fix", err, DriftFile, c.want)
		}
	}
}
