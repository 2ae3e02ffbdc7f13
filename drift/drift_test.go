package drift

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"gnld/internal/toolchain"
	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"

	"gnld/internal/mtd"
)

// defaultBundle is the shipped bundle, which has drift.json.
const defaultBundle = "../models/default"

func loadDefault(t testing.TB) *models.Bundle {
	t.Helper()
	b, err := models.Load(defaultBundle)
	if err != nil {
		t.Fatal(err)
	}
	if b.Drift == nil {
		t.Fatalf("%s has no drift.json; write it with `gnl drift-stats --data MTD --bundle %s`", defaultBundle, defaultBundle)
	}
	return b
}

// Go's features equal gnl/drift.py's on real images: both call the same
// OpenCV functions; only float sums may differ in their last bits.
func TestFeaturesMatchPython(t *testing.T) {
	b := loadDefault(t)
	root := mtd.Dir(t)
	var images []string
	for _, class := range []string{"good", "crack", "blowhole"} {
		files, _ := filepath.Glob(filepath.Join(root, "test", class, "*.jpg"))
		images = append(images, files[0], files[len(files)/2])
	}
	// Perturbed and odd-sized frames too (a PNG from the toolchain).
	pert := t.TempDir()
	toolchain.Python(t, "-m", "gnl.drift", "perturb", "--out", pert, images[0])
	more, _ := filepath.Glob(filepath.Join(pert, "*", "*.png"))
	images = append(images, more...)

	ext, err := NewExtractor(b.Drift)
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	out := toolchain.Python(t, append([]string{"-m", "gnl.drift", "features", "--reference", filepath.Join(defaultBundle, models.DriftFile)}, images...)...)
	sc := bufio.NewScanner(bytes.NewReader(out))
	n := 0
	for sc.Scan() {
		var py map[string]any
		if err := json.Unmarshal(sc.Bytes(), &py); err != nil {
			t.Fatal(err)
		}
		img := gocv.IMRead(py["image"].(string), gocv.IMReadColor)
		f, err := ext.Features(img)
		img.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, name := range names[:Score] {
			if d := math.Abs(f[i] - py[name].(float64)); d > 1e-9 {
				t.Errorf("%s %s: Go %v, Python %v", filepath.Base(py["image"].(string)), name, f[i], py[name])
			}
		}
		n++
	}
	if n != len(images) {
		t.Fatalf("python gave %d results for %d images", n, len(images))
	}
}

// scorer scores image files with the default bundle, once per file.
type scorer struct {
	p     *pipeline.Pipeline
	cache map[string]float32
}

func (s *scorer) score(t testing.TB, path string, img gocv.Mat) float32 {
	if v, ok := s.cache[path]; ok {
		return v
	}
	res, err := s.p.Process(img)
	if err != nil {
		t.Fatal(err)
	}
	s.cache[path] = res.Score
	return res.Score
}

// stream feeds files to m in order and returns the state after each.
// Frames the monitor does not measure (Due false) are not scored: the
// model is the slow part of this test, and the monitor reads no score
// from them.
func stream(t testing.TB, m *Monitor, sc *scorer, files []string) []Status {
	var out []Status
	for _, f := range files {
		img := gocv.IMRead(f, gocv.IMReadColor)
		if img.Empty() {
			t.Fatalf("%s: cannot read", f)
		}
		score := float32(math.NaN())
		if m.Due() {
			score = sc.score(t, f, img)
		}
		if err := m.Observe(img, score); err != nil {
			t.Fatal(err)
		}
		img.Close()
		out = append(out, m.Status())
	}
	return out
}

// defaults are gnld's defaults (GNLD_DRIFT_*).
var defaults = Config{Every: 2, Window: 20, Threshold: 3}

// The proof, on real MTD images through the real pipeline and OpenCV, at
// gnld's default settings: for each condition a camera streams 40 clean
// test/good frames, then 50 frames under the condition, then 60 clean
// ones. The state must stay ok on the clean frames before, turn to
// warning within the 50 changed frames and come back to ok within the
// 60 clean frames after. Conditions (python -m gnl.drift perturb): the
// toolchain's brightness, contrast, defocus blur and noise
// (gnl/perturb.py), a 15-degree turn, and a camera moved by a quarter of
// the frame (shifted ROI).
//
// The drift monitor and the bundle's drift policy agree (gnl/policy.py):
// drift the model was trained to take as normal needs no technician.
// With a product or vand2 policy (drift.json's drift_policy), three
// changes inside the product policy (15% more light, a little out of
// focus, a 10-degree turn) must give no warning at all, while those
// outside it still must; the 15-degree turn, at the policy's edge, is
// logged.
//
// And MTD test/good alone, in name order and shuffled, every frame
// measured, never gives a warning.
func TestDriftDetectsAndRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the default model on about 500 frames; skipped with -short")
	}
	b := loadDefault(t)
	if _, ok := b.Drift.Features[models.DriftScore]; !ok {
		t.Fatal("drift.json has no held-back score distribution")
	}
	p, err := pipeline.New(b, runtime.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sc := &scorer{p: p, cache: map[string]float32{}}
	good, _ := filepath.Glob(filepath.Join(mtd.Dir(t), "test", "good", "*.jpg"))
	slices.Sort(good)
	if len(good) < 150+5*8 {
		t.Fatalf("%d test/good images, want at least 190", len(good))
	}

	// Clean: every test/good image, every frame measured, in name order
	// (images of one session come together) and shuffled.
	shuffled := slices.Clone(good)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, order := range []struct {
		name  string
		files []string
	}{{"name order", good}, {"shuffled", shuffled}} {
		m, err := New(b.Drift, Config{Every: 1, Window: defaults.Window, Threshold: defaults.Threshold})
		if err != nil {
			t.Fatal(err)
		}
		warnings, top, feature := 0, 0.0, ""
		for _, s := range stream(t, m, sc, order.files) {
			if s.State == Warning {
				warnings++
			}
			if s.Samples >= uint64(defaults.Window) && s.Score > top {
				top, feature = s.Score, s.Feature
			}
		}
		m.Close()
		t.Logf("test/good, %s: %d frames, %d in warning; highest drift score %.2f (%s), warning at %.1f",
			order.name, len(order.files), warnings, top, feature, defaults.Threshold)
		if warnings > 0 {
			t.Errorf("test/good, %s: %d frames in warning, want 0 (false alarms)", order.name, warnings)
		}
	}

	// The changed frames come from the toolchain.
	pert := t.TempDir()
	conditions := []string{"brightness", "contrast", "defocus", "noise", "rotation", "moved"}
	inside := map[string]bool{} // conditions inside the bundle's drift policy
	edge := map[string]bool{}   // inside it, at its edge
	if p := b.Drift.DriftPolicy; p != "" && p != "legacy" {
		conditions = append(conditions, "inside-light", "inside-focus", "inside-rotation")
		inside = map[string]bool{"inside-light": true, "inside-focus": true, "inside-rotation": true}
		// The 15-degree turn is inside the product policy's 20 too, but near
		// its edge: the layout feature (nearest training thumbnail) still
		// flags it on part of the frames (models/RESULTS.md, "Drift
		// policies"). Logged, not checked either way.
		edge = map[string]bool{"rotation": true}
	}
	t.Logf("drift policy %q: conditions inside it (no warning wanted): %v", b.Drift.DriftPolicy, inside)
	step := min(8, (len(good)-150)/(len(conditions)-1)) // each condition on other images
	toolchain.Python(t, append([]string{"-m", "gnl.drift", "perturb", "--out", pert}, good[40:step*(len(conditions)-1)+90]...)...)
	for k, cond := range conditions {
		o := k * step
		var files []string
		files = append(files, good[o:o+40]...)
		for _, f := range good[o+40 : o+90] {
			files = append(files, filepath.Join(pert, cond, strings.TrimSuffix(filepath.Base(f), ".jpg")+".png"))
		}
		files = append(files, good[o+90:o+150]...)
		m, err := New(b.Drift, defaults)
		if err != nil {
			t.Fatal(err)
		}
		states := stream(t, m, sc, files)
		m.Close()
		if inside[cond] || edge[cond] {
			warned, top, feature := 0, 0.0, ""
			for _, s := range states {
				if s.State == Warning {
					warned++
				}
				if s.Score > top {
					top, feature = s.Score, s.Feature
				}
			}
			t.Logf("%s (inside the policy): %d frames in warning, highest drift score %.2f (%s)", cond, warned, top, feature)
			if warned > 0 && inside[cond] {
				t.Errorf("%s is inside the bundle's drift policy %q but warned on %d frames", cond, b.Drift.DriftPolicy, warned)
			}
			continue
		}
		detect, recover := -1, -1
		for i, s := range states {
			switch {
			case i < 40 && s.State != OK:
				t.Errorf("%s: warning at clean frame %d, before the change (%+v)", cond, i+1, s)
			case i >= 40 && i < 90 && detect < 0 && s.State == Warning:
				detect = i - 40 + 1
				t.Logf("%s: warning after %d changed frames: %s at z %.1f, drift score %.1f", cond, detect, s.Feature, s.Features[s.Feature], s.Score)
			case i >= 90 && detect > 0 && recover < 0 && s.State == OK:
				recover = i - 90 + 1
			}
		}
		if detect < 0 {
			s := states[89]
			t.Errorf("%s: no warning within 50 changed frames; last drift score %.2f (%s), features %v", cond, s.Score, s.Feature, s.Features)
			continue
		}
		if recover < 0 {
			t.Errorf("%s: still warning after 60 clean frames: %+v", cond, states[len(states)-1])
			continue
		}
		t.Logf("%s: back to ok after %d clean frames", cond, recover)
	}
}

// The hysteresis on a synthetic drift score: Hold samples past a level
// change the state, fewer do not.
func TestHysteresis(t *testing.T) {
	m := &Monitor{cfg: Config{Threshold: 3}, state: OK}
	for i, c := range []struct {
		score float64
		want  string
	}{
		{3.5, OK}, {3.5, OK}, {2.9, OK}, // a dip resets the count
		{3.1, OK}, {3.2, OK}, {3.0, Warning}, // three in a row
		{2.5, Warning}, {1.9, Warning}, {1.5, Warning}, {2.1, Warning}, // 2.5 is not below 2
		{1, Warning}, {1, Warning}, {1, OK},
	} {
		m.step(c.score)
		if m.state != c.want {
			t.Fatalf("step %d (score %v): state %s, want %s", i, c.score, m.state, c.want)
		}
	}
}

// The feature named is the worst, but an image feature past the
// threshold goes before the model's score: it tells what to fix.
func TestFeatureNamed(t *testing.T) {
	for _, c := range []struct {
		sharpness, score float64
		want             string
	}{{-4, 9, "sharpness"}, {-1, 9, "score"}, {-5, 4, "sharpness"}} {
		m := &Monitor{cfg: Config{Window: 2, Threshold: 3}, feature: []int{Sharpness, Score},
			median: make([]float64, numFeatures), scale: slices.Repeat([]float64{1}, numFeatures),
			twoSide: make([]bool, numFeatures), scratch: make([]float64, 2), state: OK}
		m.twoSide[Sharpness] = true
		var f Features
		f[Sharpness], f[Score] = c.sharpness, c.score
		m.add(f)
		m.add(f)
		if st := m.Status(); st.Feature != c.want || st.Score != max(math.Abs(c.sharpness), c.score) {
			t.Errorf("sharpness z %v, score z %v: named %s (score %v), want %s", c.sharpness, c.score, st.Feature, st.Score, c.want)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	b := loadDefault(t)
	for _, c := range []Config{{Every: 0, Window: 20, Threshold: 3}, {Every: 1, Window: 1, Threshold: 3}, {Every: 1, Window: 20}} {
		if _, err := New(b.Drift, c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

// The cost of a measured frame (every GNLD_DRIFT_EVERY-th): an MTD image
// as it is (0.2 megapixels) and scaled to 1920x1080.
func BenchmarkFeatures(b *testing.B) {
	bd := loadDefault(b)
	files, _ := filepath.Glob(filepath.Join(mtd.Dir(b), "test", "good", "*.jpg"))
	img := gocv.IMRead(files[0], gocv.IMReadColor)
	defer img.Close()
	hd := gocv.NewMat()
	defer hd.Close()
	gocv.Resize(img, &hd, image.Pt(1920, 1080), 0, 0, gocv.InterpolationLinear)
	ext, err := NewExtractor(bd.Drift)
	if err != nil {
		b.Fatal(err)
	}
	defer ext.Close()
	for _, c := range []struct {
		name  string
		frame gocv.Mat
	}{{fmt.Sprintf("%dx%d", img.Cols(), img.Rows()), img}, {"1920x1080", hd}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := ext.Features(c.frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func ExampleStatus() {
	s := Status{State: Warning, Score: 5.2, Feature: "sharpness", Hint: hint(Sharpness, -5.2)}
	fmt.Println(s.State, s.Feature, s.Hint)
	// Output: warning sharpness blurrier than the training images: check focus, clean the lens, check for vibration or motion blur
}
