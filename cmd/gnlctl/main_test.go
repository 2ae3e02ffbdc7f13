package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gnld/internal/mtd"
)

const tiny = "../../models/testdata/tiny"

func runArgs(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"infer", "x.jpg"}, {"bench", "--model", tiny, "--threads", "0"}, {"eval", "--model", tiny}} {
		_, err := runArgs(t, args...)
		if !errors.As(err, new(usageError)) {
			t.Errorf("%q: error %v, want a usage error", args, err)
		}
	}
}

func TestInspect(t *testing.T) {
	out, err := runArgs(t, "inspect", tiny)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"input      160x128 RGB int8", `tensor     input  "serving_default_args_0" int8 [1 128 160 3]`, "runs on    xnnpack", "placement  xnnpack 64/79 nodes (3 partitions); builtin kernels 15/79 nodes: SUM 9, RSQRT 6", "GMAC per frame"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if _, err := runArgs(t, "inspect", t.TempDir()); err == nil || !strings.Contains(err.Error(), "model.json") {
		t.Errorf("inspect of an empty folder: %v", err)
	}
}

func TestInfer(t *testing.T) {
	dir := filepath.Join(mtd.Dir(t), "test", "fray")
	heat := t.TempDir()
	out, err := runArgs(t, "infer", "--model", tiny, dir, "--heatmaps", heat)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	files, _ := listImages(dir)
	if len(lines) != len(files) {
		t.Fatalf("%d lines for %d images", len(lines), len(files))
	}
	var l inferLine
	if err := json.Unmarshal([]byte(lines[0]), &l); err != nil {
		t.Fatal(err)
	}
	if l.Image != files[0] || l.Score == 0 || l.Heatmap == "" {
		t.Errorf("line %+v", l)
	}
	if _, err := os.Stat(l.Heatmap); err != nil {
		t.Error(err)
	}
}

func TestBench(t *testing.T) {
	out, err := runArgs(t, "bench", "--model", tiny, "--n", "3", "--threads", "1", "--json", "--image", "")
	if err != nil {
		t.Fatal(err)
	}
	var r benchResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.Threads != 1 || r.InvokeMS <= 0 || r.FPS <= 0 || r.PeakRSSMB <= 0 || r.Delegate != "xnnpack" ||
		r.GMAC <= 0 || r.GMACPerS <= 0 || !strings.HasPrefix(r.Placement, "xnnpack ") {
		t.Errorf("%+v", r)
	}
}

func TestEval(t *testing.T) {
	data := mtd.Dir(t)
	js := filepath.Join(t.TempDir(), "eval.json")
	if _, err := runArgs(t, "eval", "--model", tiny, "--data", data, "--limit", "40", "--json", js); err != nil {
		t.Fatal(err)
	}
	var r evalResult
	b, _ := os.ReadFile(js)
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Images != 40 || len(r.Metrics) != 4 {
		t.Errorf("%+v", r)
	}
	_, err := runArgs(t, "eval", "--model", tiny, "--data", data, "--perturb", "vand2")
	if err == nil || !strings.Contains(err.Error(), "gnl test --data MTD --perturb vand2 --dump") {
		t.Errorf("vand2 on clean data: %v", err)
	}
}

func TestSubsetIndex(t *testing.T) {
	// Expected values from gnl test's subset: np.unique(np.linspace(0, n-1, limit).round()).
	for _, c := range []struct {
		n, limit int
		want     []int
	}{
		{585, 20, []int{0, 31, 61, 92, 123, 154, 184, 215, 246, 277, 307, 338, 369, 400, 430, 461, 492, 523, 553, 584}},
		{7, 6, []int{0, 1, 2, 4, 5, 6}},
		{100, 7, []int{0, 16, 33, 50, 66, 82, 99}}, // 16.5 and 82.5 round half to even
		{5, 1, []int{0}},
		{3, 2, []int{0, 2}},
		{3, 9, []int{0, 1, 2}},
	} {
		if got := subsetIndex(c.n, c.limit); !slices.Equal(got, c.want) {
			t.Errorf("subsetIndex(%d, %d) = %v, want %v", c.n, c.limit, got, c.want)
		}
	}
}

// TestEvalDump scores a folder shaped like `gnl test --dump`'s output: the
// marker sets --perturb when it is not given and contradicts "none".
func TestEvalDump(t *testing.T) {
	src := mtd.Dir(t)
	dir := t.TempDir()
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(to), 0o755)
		if err := os.WriteFile(to, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, label := range []string{"good", "fray"} {
		files, _ := listImages(filepath.Join(src, "test", label))
		for _, f := range files[:2] {
			copyFile(f, filepath.Join(dir, "test", label, filepath.Base(f)))
			if label != "good" {
				stem := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
				copyFile(filepath.Join(src, "ground_truth", label, stem+"_mask.png"),
					filepath.Join(dir, "ground_truth", label, stem+"_mask.png"))
			}
		}
	}
	os.WriteFile(filepath.Join(dir, perturbMarker), []byte(`{"perturb": "vand2", "seed": 5, "source": "/x"}`), 0o644)
	js := filepath.Join(t.TempDir(), "eval.json")
	if _, err := runArgs(t, "eval", "--model", tiny, "--data", dir, "--json", js); err != nil {
		t.Fatal(err)
	}
	var r evalResult
	b, _ := os.ReadFile(js)
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Perturb != "vand2" || r.Seed == nil || *r.Seed != 5 || r.Source != "/x" || r.Images != 4 {
		t.Errorf("%s", b)
	}
	if _, err := runArgs(t, "eval", "--model", tiny, "--data", dir, "--perturb", "none"); err == nil {
		t.Error("--perturb none on a vand2 folder: no error")
	}
}
