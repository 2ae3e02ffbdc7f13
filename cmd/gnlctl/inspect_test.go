package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tinyWithMetrics copies the tiny bundle into a temporary folder with the
// default bundle's recorded metrics in its model.json.
func tinyWithMetrics(t *testing.T) string {
	t.Helper()
	var def struct {
		Metrics json.RawMessage `json:"metrics"`
	}
	raw, err := os.ReadFile("../../models/default/model.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &def); err != nil || len(def.Metrics) == 0 {
		t.Fatalf("default bundle's metrics: %v", err)
	}
	var meta map[string]json.RawMessage
	raw, err = os.ReadFile(filepath.Join(tiny, "model.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	meta["metrics"] = def.Metrics
	dir := t.TempDir()
	out, _ := json.Marshal(meta)
	model, err := os.ReadFile(filepath.Join(tiny, "model.tflite"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"model.json": out, "model.tflite": model} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// recorded is one run and condition of model.json's metrics.
type recorded struct {
	ImageAUROC float64 `json:"image_auroc"`
	ImageF1Max float64 `json:"image_f1max"`
	PixelAUROC float64 `json:"pixel_auroc"`
	AUPRO      float64 `json:"aupro"`
	Verdict    struct {
		FalseAlarms  int `json:"false_alarms"`
		GoodImages   int `json:"good_images"`
		Detected     int `json:"detected"`
		DefectImages int `json:"defect_images"`
	} `json:"verdict"`
}

// gnlctlMetrics reads the default bundle's recorded gnlctl_int8 metrics,
// condition -> figures, which the table must show.
func gnlctlMetrics(t *testing.T) map[string]recorded {
	t.Helper()
	var def struct {
		Metrics struct {
			GnlctlInt8 map[string]recorded `json:"gnlctl_int8"`
		} `json:"metrics"`
	}
	raw, err := os.ReadFile("../../models/default/model.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &def); err != nil {
		t.Fatal(err)
	}
	return def.Metrics.GnlctlInt8
}

func TestInspectMetricsTable(t *testing.T) {
	out, err := runArgs(t, "inspect", tinyWithMetrics(t))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	var table []string
	for i, l := range lines {
		if strings.HasPrefix(l, "metrics    ") {
			for _, row := range lines[i:] {
				if !strings.HasPrefix(row, "metrics    ") && !strings.HasPrefix(row, "           ") {
					break
				}
				table = append(table, row)
			}
			break
		}
	}
	if len(table) != 7 { // the header and 3 runs x 2 conditions
		t.Fatalf("metrics table of %d lines, want 7:\n%s", len(table), out)
	}
	head := table[0]
	for _, col := range []string{"run", "condition", "image AUROC", "F1Max", "pixel AUROC", "AUPRO", "false alarms", "recall"} {
		if !strings.Contains(head, col) {
			t.Errorf("header lacks %q: %s", col, head)
		}
	}
	// The rows in make eval's order, clean first, and every column aligned
	// under its heading.
	g := gnlctlMetrics(t)["clean"]
	pct := func(x float64) string { return fmt.Sprintf("%.2f", 100*x) }
	want := [][]string{
		{"float", "clean"}, {"float", "vand2"}, {"int8", "clean"}, {"int8", "vand2"},
		{"gnlctl_int8", "clean", pct(g.ImageAUROC), pct(g.ImageF1Max), pct(g.PixelAUROC), pct(g.AUPRO),
			fmt.Sprintf("%d/%d", g.Verdict.FalseAlarms, g.Verdict.GoodImages), fmt.Sprintf("%d/%d", g.Verdict.Detected, g.Verdict.DefectImages)},
		{"gnlctl_int8", "vand2"},
	}
	cols := []string{"run", "condition", "image AUROC", "F1Max", "pixel AUROC", "AUPRO", "false alarms", "recall"}
	for i, w := range want {
		row := table[i+1]
		for j, cell := range w {
			at := strings.Index(head, cols[j])
			if !strings.HasPrefix(row[at:], cell+" ") && row[at:] != cell {
				t.Errorf("row %d, column %q: want %q at %d:\n%s\n%s", i+1, cols[j], cell, at, head, row)
			}
		}
	}
	if !strings.Contains(out, "measured   on mtd, 585 test images: tools/evaluate ") { // then the bundle where it was measured
		t.Errorf("no measured_on line:\n%s", out)
	}
	if strings.Contains(out, `{"`) {
		t.Errorf("raw JSON in the text output:\n%s", out)
	}
}

func TestInspectWithoutMetrics(t *testing.T) {
	out, err := runArgs(t, "inspect", tiny) // its metrics: {"float": {}, "int8": {}}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "metrics    none recorded") {
		t.Errorf("inspect output lacks the no-metrics line:\n%s", out)
	}
}

func TestInspectJSON(t *testing.T) {
	out, err := runArgs(t, "inspect", "--json", tinyWithMetrics(t))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		ModelJSON struct {
			Name    string                    `json:"name"`
			Metrics map[string]map[string]any `json:"metrics"`
		} `json:"model_json"`
		Tensors   map[string]tensorJSON `json:"tensors"`
		RunsOn    string                `json:"runs_on"`
		Placement struct {
			Nodes int `json:"nodes"`
		} `json:"placement"`
		GMAC float64 `json:"gmac"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	in := r.Tensors["input"]
	if r.ModelJSON.Name == "" || r.ModelJSON.Metrics["gnlctl_int8"]["clean"] == nil || in.DType != "int8" ||
		len(in.Shape) != 4 || r.RunsOn != "xnnpack" || r.Placement.Nodes != 79 || r.GMAC <= 0 {
		t.Errorf("inspect --json: %+v", r)
	}
}
