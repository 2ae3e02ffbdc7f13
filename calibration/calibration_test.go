package calibration

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gnld/models"
)

// Quantile is numpy.quantile (the older bundles' rule), checked against
// numpy itself on random score sets of the sizes calibration sees.
func TestQuantileIsNumpyQuantile(t *testing.T) {
	if _, err := exec.Command("python3", "-c", "import numpy").CombinedOutput(); err != nil {
		t.Skipf("python3 with numpy not available: %v", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	type tc struct {
		scores []float64
		q      float64
	}
	var cases []tc
	for _, n := range []int{1, 2, 10, 76, 193, 200, 1001} {
		for _, q := range []float64{0.5, 0.9, 0.995, 1} {
			s := make([]float64, n)
			for i := range s {
				s[i] = 1.5 + rng.NormFloat64()*0.2
			}
			cases = append(cases, tc{s, q})
		}
	}
	in, _ := json.Marshal(func() (out [][2]any) {
		for _, c := range cases {
			out = append(out, [2]any{c.scores, c.q})
		}
		return
	}())
	py := exec.Command("python3", "-c", `import json, sys, numpy as np
for s, q in json.load(sys.stdin): print(repr(float(np.quantile(s, q))))`)
	py.Stdin = strings.NewReader(string(in))
	out, err := py.Output()
	if err != nil {
		t.Fatalf("numpy: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(cases) {
		t.Fatalf("%d numpy answers for %d cases", len(lines), len(cases))
	}
	for i, c := range cases {
		want, _ := strconv.ParseFloat(lines[i], 64)
		if got := Quantile(c.scores, c.q); math.Abs(got-want) > 1e-12*math.Abs(want) {
			t.Errorf("n=%d q=%g: Quantile %v, numpy.quantile %v", len(c.scores), c.q, got, want)
		}
	}
}

// Gumbel is the toolchain's rule: gnl/threshold.py's gumbel_threshold,
// run in Python on the same random score sets.
func TestGumbelIsTheToolchainRule(t *testing.T) {
	py := exec.Command("python3", "-c", `import json, sys
from gnl.threshold import gumbel_threshold
for s, q in json.load(sys.stdin): print(repr(float(gumbel_threshold(s, q))))`)
	py.Env = append(os.Environ(), "PYTHONPATH=../models")
	rng := rand.New(rand.NewPCG(3, 4))
	var cases [][2]any
	for _, n := range []int{2, 10, 76, 193, 1001} {
		for _, target := range []float64{0.001, 0.01, 0.05, 0.5} {
			s := make([]float64, n)
			for i := range s {
				s[i] = 1.8 - 0.1*math.Log(-math.Log(rng.Float64())) // Gumbel(1.8, 0.1)
			}
			cases = append(cases, [2]any{s, target})
		}
	}
	in, _ := json.Marshal(cases)
	py.Stdin = strings.NewReader(string(in))
	out, err := py.CombinedOutput()
	if err != nil {
		t.Skipf("python3 with models/gnl/threshold.py not available: %v %s", err, out)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(cases) {
		t.Fatalf("%d Python answers for %d cases: %s", len(lines), len(cases), out)
	}
	for i, c := range cases {
		want, _ := strconv.ParseFloat(lines[i], 64)
		scores, target := c[0].([]float64), c[1].(float64)
		if got := Gumbel(scores, target); math.Abs(got-want) > 1e-12*math.Abs(want) {
			t.Errorf("n=%d target=%g: Gumbel %v, gnl.threshold.gumbel_threshold %v", len(scores), target, got, want)
		}
	}
}

// The toolchain's own numbers: gnl fit writes the held-back normal
// images' scores, its rule and the threshold it derived from them into
// the default bundle's calibration.json. The rule of that name must give
// the same number from the same scores (written rounded to 6 decimals,
// hence the tolerance).
func TestRuleMatchesToolchainOnDefaultBundle(t *testing.T) {
	var cal struct {
		Scores    []float64 `json:"normal_scores"`
		Rule      string    `json:"threshold_rule"`
		Target    *float64  `json:"false_alarm_target"`
		Quantile  *float64  `json:"normal_quantile"`
		Threshold float64   `json:"threshold"`
		// A drift policy's views of the same images, which the threshold
		// also saw (gnl/policy.py); the clean-only threshold beside it.
		Views []float64 `json:"view_scores"`
		Clean *float64  `json:"threshold_clean"`
	}
	b, err := os.ReadFile("../models/default/calibration.json")
	if err != nil || json.Unmarshal(b, &cal) != nil || len(cal.Scores) == 0 {
		t.Skipf("models/default/calibration.json without normal_scores: %v", err)
	}
	rule, err := RuleOf(models.Threshold{Rule: cal.Rule, FalseAlarmTarget: cal.Target, NormalQuantile: cal.Quantile})
	if err != nil {
		t.Fatal(err)
	}
	got := rule.Threshold(append(slices.Clone(cal.Scores), cal.Views...))
	t.Logf("%d scores (%d of them in the drift policy's views), rule %s: %.7f, toolchain %.7f", len(cal.Scores)+len(cal.Views), len(cal.Views), rule, got, cal.Threshold)
	if cal.Clean != nil {
		if clean := rule.Threshold(cal.Scores); math.Abs(clean-*cal.Clean) > 1e-5 {
			t.Errorf("rule %s on the clean scores gives %.7f, the toolchain's threshold_clean %.7f", rule.Name, clean, *cal.Clean)
		}
	}
	if math.Abs(got-cal.Threshold) > 1e-5 {
		t.Errorf("rule %s gives %.7f, the toolchain %.7f from the same scores: align package calibration with models/gnl/threshold.py", rule.Name, got, cal.Threshold)
	}
	if hi := slices.Max(cal.Scores); math.Abs(hi-cal.Threshold) < 1e-4 {
		t.Logf("note: the threshold is the maximum score here, so this check cannot tell the rule from the maximum")
	}
}

func TestRuleOf(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		th   models.Threshold
		want Rule
		err  string
	}{
		{models.Threshold{Rule: "gumbel", FalseAlarmTarget: f(0.02)}, Rule{Name: RuleGumbel, Target: 0.02}, ""},
		{models.Threshold{Rule: "gumbel"}, Rule{Name: RuleGumbel, Target: DefaultFalseAlarmTarget}, ""},
		{models.Threshold{NormalQuantile: f(0.995)}, Rule{Name: RuleQuantile, Quantile: 0.995}, ""},
		{models.Threshold{}, Rule{Name: RuleGumbel, Target: DefaultFalseAlarmTarget}, ""},
		{models.Threshold{Rule: "weibull"}, Rule{}, `threshold.rule "weibull"`},
		{models.Threshold{Rule: "gumbel", FalseAlarmTarget: f(1.5)}, Rule{}, "false_alarm_target 1.5"},
		{models.Threshold{NormalQuantile: f(0)}, Rule{}, "normal_quantile 0"},
	} {
		got, err := RuleOf(tc.th)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %+v %v, want %+v %q", tc.th, got, err, tc.want, tc.err)
		}
	}
}

func record(camera string, threshold float64, sha string) Record {
	scores := make([]float64, MinImages)
	for i := range scores {
		scores[i] = threshold * float64(i+1) / MinImages
	}
	r, err := New(camera, "/data/good", scores, Rule{Name: RuleGumbel, Target: 0.01}, Model{Name: "m", Version: "v1", SHA256: sha}, 9)
	if err != nil {
		panic(err)
	}
	return r
}

func TestWriteReadAndFallback(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "calibration") // Write creates it
	shaA, shaB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	if r, path, err := Read(dir, "line1"); r != nil || path != "" || err != nil {
		t.Fatalf("missing folder: %v %q %v, want nothing", r, path, err)
	}
	if _, err := Write(dir, record("", 2, shaA)); err != nil {
		t.Fatal(err)
	}
	path1, err := Write(dir, record("line1", 3, shaB))
	if err != nil {
		t.Fatal(err)
	}
	r, path, err := Read(dir, "line1")
	if err != nil || path != path1 || r.Camera != "line1" || !r.Applies(shaB) || r.Applies(shaA) || r.Images != MinImages || r.Date.IsZero() {
		t.Errorf("line1: %+v %s %v", r, path, err)
	}
	r, path, err = Read(dir, "line2") // no file of its own: _all.json
	if err != nil || filepath.Base(path) != "_all.json" || r.Camera != "" || !r.Applies(shaA) {
		t.Errorf("line2: %+v %s %v", r, path, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".calibration-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	os.WriteFile(path1, []byte(`{"threshold": 2`), 0o644)
	if _, _, err := Read(dir, "line1"); err == nil || !strings.Contains(err.Error(), path1) || !strings.Contains(err.Error(), "gnlctl calibrate") {
		t.Errorf("half a record: %v, want an error naming the file and the fix", err)
	}
	b, _ := json.Marshal(map[string]any{"threshold": 0, "model": record("line1", 3, shaB).Model})
	os.WriteFile(path1, b, 0o644)
	if _, _, err := Read(dir, "line1"); err == nil || !strings.Contains(err.Error(), "threshold 0") {
		t.Errorf("threshold 0: %v", err)
	}
	if _, err := Write(dir, record("Line-1", 3, shaB)); err == nil || !strings.Contains(err.Error(), `"Line-1"`) {
		t.Errorf("bad camera name: %v", err)
	}
}

func TestNewNeedsEnoughImages(t *testing.T) {
	_, err := New("a", "/good", []float64{1, 2, 3}, Rule{Name: RuleGumbel, Target: 0.01}, Model{}, 1)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at least %d", MinImages)) || !strings.Contains(err.Error(), "/good") {
		t.Errorf("3 images: %v", err)
	}
}
