package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const tiny = "../../models/testdata/tiny"

func mtdDir(t *testing.T) string {
	dir := os.Getenv("MTD")
	if dir == "" {
		dir = "../../../shared/data/mtd"
	}
	if _, err := os.Stat(filepath.Join(dir, "test")); err != nil {
		t.Skipf("MTD data not found (%v); set MTD", err)
	}
	return dir
}

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
	for _, want := range []string{"input      160x128 RGB int8", `tensor     input  "serving_default_args_0" int8 [1 128 160 3]`, "runs on    cpu"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if _, err := runArgs(t, "inspect", t.TempDir()); err == nil || !strings.Contains(err.Error(), "model.json") {
		t.Errorf("inspect of an empty folder: %v", err)
	}
}

func TestInfer(t *testing.T) {
	dir := filepath.Join(mtdDir(t), "test", "fray")
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
	if r.Threads != 1 || r.InvokeMS <= 0 || r.FPS <= 0 || r.PeakRSSMB <= 0 {
		t.Errorf("%+v", r)
	}
}

func TestEval(t *testing.T) {
	data := mtdDir(t)
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
