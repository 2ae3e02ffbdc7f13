package main

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestMetricsMatchPython compares the Go metrics with gnl/metrics.py on
// random maps with ties and several regions per mask.
func TestMetricsMatchPython(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n, w, h = 12, 16, 12
	var in struct {
		Labels []int       `json:"labels"`
		Scores []float64   `json:"scores"`
		Maps   [][]float32 `json:"maps"`
		Masks  [][]int     `json:"masks"`
	}
	px := newPixels()
	var labels []bool
	for i := range n {
		m := make([]float32, w*h)
		mask := make([]int, w*h)
		for j := range m {
			m[j] = float32(rng.IntN(50)) / 10 // coarse values: many ties
		}
		anomalous := i%3 != 0
		if anomalous { // two rectangles: two 8-connected regions
			for y := 2; y < 5; y++ {
				for x := 2; x < 6; x++ {
					mask[y*w+x] = 1
					m[y*w+x] += 2
				}
			}
			for y := 8; y < 11; y++ {
				mask[y*w+12] = 1
			}
		}
		lab := make([]int32, w*h)
		for j, v := range mask {
			if v == 1 {
				lab[j] = 1
				if j%w == 12 {
					lab[j] = 2
				}
			}
		}
		regions := 0
		if anomalous {
			regions = 2
		}
		px.add(m, lab, regions)
		labels = append(labels, anomalous)
		label := 0
		if anomalous {
			label = 1
		}
		in.Labels = append(in.Labels, label)
		in.Scores = append(in.Scores, math.Round((rng.Float64()+0.5*float64(label))*5)/5)
		in.Maps = append(in.Maps, m)
		in.Masks = append(in.Masks, mask)
	}
	script := `
import json, sys, numpy as np
from gnl import metrics
d = json.load(sys.stdin)
maps = [np.array(m, np.float32).reshape(12, 16) for m in d["maps"]]
masks = [np.array(m, np.uint8).reshape(12, 16) for m in d["masks"]]
print(json.dumps({"image_auroc": metrics.image_auroc(d["labels"], d["scores"]),
                  "image_f1max": metrics.image_f1max(d["labels"], d["scores"]),
                  "pixel_auroc": metrics.pixel_auroc(masks, maps), "aupro": metrics.aupro(masks, maps)}))
`
	stdin, _ := json.Marshal(in)
	cmd := exec.Command("python3", "-c", script)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join("..", "..", "models"))
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python gnl.metrics (run inside tools/sidroot): %v", err)
	}
	var want map[string]float64
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	got["image_auroc"], _ = imageAUROC(labels, in.Scores)
	got["image_f1max"], _ = imageF1Max(labels, in.Scores)
	got["pixel_auroc"], got["aupro"], err = px.metrics()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		if math.Abs(got[k]-v) > 1e-9 {
			t.Errorf("%s: Go %.12f, Python %.12f", k, got[k], v)
		}
	}
	t.Logf("Go %v\nPython %v", got, want)
}
