package drift

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"gnld/models"

	"gnld/internal/mtd"
)

// FuzzDriftJSON gives models.Load arbitrary drift.json bytes in a copy of
// the tiny bundle. Load must refuse them with an error naming drift.json,
// or the statistics must make a Monitor that measures a real frame (the
// first good MTD test image); never a panic or a crash in OpenCV. Seeds:
// the default bundle's drift.json and small broken ones.
func FuzzDriftJSON(f *testing.F) {
	seed, err := os.ReadFile(filepath.Join(defaultBundle, models.DriftFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	for _, s := range []string{"", "{}", "null", `{"format_version": 1, "presize": 64, "analysis_size": 8, "thumb_size": 2,
		"orientation_bins": 2, "orientation_mean": [0.5, 0.5], "black_percentile": 0.01, "thumbnails": ["00010203"],
		"features": {"brightness": {"scale": 1}, "contrast": {"scale": 1}, "black_level": {"scale": 1}, "sharpness": {"scale": 1},
		"colour_rg": {"scale": 1}, "colour_bg": {"scale": 1}, "orientation": {"scale": 1}, "layout": {"scale": 1}}}`} {
		f.Add([]byte(s))
	}
	files, _ := filepath.Glob(filepath.Join(mtd.Dir(f), "test", "good", "*.jpg"))
	if len(files) == 0 {
		f.Fatal("no MTD test images")
	}
	frame := gocv.IMRead(files[0], gocv.IMReadColor)
	if frame.Empty() {
		f.Fatalf("%s: cannot read", files[0])
	}
	f.Cleanup(func() { frame.Close() })
	dir := f.TempDir()
	for _, name := range []string{models.MetaFile, "model.tflite"} {
		src, err := filepath.Abs(filepath.Join("../models/testdata/tiny", name))
		if err != nil {
			f.Fatal(err)
		}
		if err := os.Symlink(src, filepath.Join(dir, name)); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, models.DriftFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := models.Load(dir)
		if err != nil {
			if !strings.Contains(err.Error(), models.DriftFile) {
				t.Fatalf("error %q does not name %s", err, models.DriftFile)
			}
			return
		}
		m, err := New(b.Drift, Config{Every: 1, Window: 2, Threshold: 3})
		if err != nil {
			t.Fatalf("Load accepted drift.json, but the monitor refuses it: %v", err)
		}
		defer m.Close()
		if err := m.Observe(frame, 0.5); err != nil {
			t.Fatalf("Load accepted drift.json, but the monitor cannot measure a frame: %v", err)
		}
	})
}
