package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unsafe"

	"gocv.io/x/gocv"

	"gnld/capture"
	"gnld/pipeline"
	"gnld/runtime"
)

// perturbMarker is the file that `gnl test --perturb vand2 --dump DIR`
// writes into DIR, next to the perturbed images (lossless PNG) and masks
// (MVTec layout), as {"perturb": "vand2", "seed": N, "source": DATA, ...}.
// gnlctl does not re-implement the perturbation's random draws; it scores
// exactly the images Python perturbed. The dump holds only the images that
// run scored (its --limit), so score it without --limit to compare.
const perturbMarker = "perturb.json"

// marker is the part of perturb.json that gnlctl reads.
type marker struct {
	Perturb string `json:"perturb"`
	Seed    *int   `json:"seed"`
	Source  string `json:"source"`
}

// evalResult is what `gnlctl eval --json` writes.
type evalResult struct {
	Model       string             `json:"model"`
	Version     string             `json:"version"`
	Data        string             `json:"data"`
	Perturb     string             `json:"perturb"`
	Seed        *int               `json:"seed,omitempty"`   // of a perturbed folder
	Source      string             `json:"source,omitempty"` // data a perturbed folder came from
	Images      int                `json:"images"`
	Delegate    string             `json:"delegate"` // where the model ran
	Metrics     map[string]float64 `json:"metrics"`
	Threshold   float32            `json:"threshold"`
	Confusion   map[string]int     `json:"confusion_at_threshold"`
	Verdict     verdictStats       `json:"verdict"`
	Seconds     float64            `json:"seconds"`
	InvokeMSP50 float64            `json:"invoke_ms_p50"`
}

// verdictStats is what a PLC acting on `verdict` gets at the bundle's
// threshold: false alarms among the good images and recall per defect class
// (the same keys as `gnl test`'s "verdict").
type verdictStats struct {
	Threshold      float32            `json:"threshold"`
	GoodImages     int                `json:"good_images"`
	FalseAlarms    int                `json:"false_alarms"`
	FalseAlarmRate float64            `json:"false_alarm_rate"`
	DefectImages   int                `json:"defect_images"`
	Detected       int                `json:"detected"`
	Recall         float64            `json:"recall"`
	RecallPerClass map[string]float64 `json:"recall_per_class"`
}

// verdicts counts flagged images per label ("good" or a defect class).
func verdicts(threshold float32, labels []string, flagged []bool) verdictStats {
	v := verdictStats{Threshold: threshold, RecallPerClass: map[string]float64{}}
	total, hit := map[string]int{}, map[string]int{}
	for i, l := range labels {
		total[l]++
		if flagged[i] {
			hit[l]++
		}
	}
	for l, n := range total {
		if l == "good" {
			v.GoodImages, v.FalseAlarms = n, hit[l]
			v.FalseAlarmRate = float64(hit[l]) / float64(n)
			continue
		}
		v.DefectImages += n
		v.Detected += hit[l]
		v.RecallPerClass[l] = float64(hit[l]) / float64(n)
	}
	if v.DefectImages > 0 {
		v.Recall = float64(v.Detected) / float64(v.DefectImages)
	}
	return v
}

type sample struct {
	image, mask, label string // mask "" for good images
}

// eval scores an MVTec-layout test set through gnld's pipeline.
func eval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("eval", stderr)
	model := fs.String("model", "", "bundle folder (required)")
	data := fs.String("data", "", "MVTec-layout folder with test/ and ground_truth/ (required)")
	perturb := fs.String("perturb", "", `"none", or "vand2": --data is a folder written by `+
		"`gnl test --perturb vand2 --dump DIR` (default: what DIR/perturb.json says, else none)")
	jsonOut := fs.String("json", "", "write the result as JSON to this file")
	threads := fs.Int("threads", 1, "TFLite CPU threads")
	delegate := fs.String("delegate", runtime.XNNPACK, "xnnpack, builtin, gpu or a delegate plugin .so")
	limit := fs.Int("limit", 0, "score at most this many evenly spaced images, the ones `gnl test --limit` picks (0: all)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || *data == "" || len(pos) > 0 {
		return usageError{"eval needs --model BUNDLE and --data DIR"}
	}
	mk, err := checkPerturb(*data, perturb)
	if err != nil {
		return err
	}
	samples, err := testSamples(*data)
	if err != nil {
		return err
	}
	if *limit > 0 {
		var some []sample
		for _, i := range subsetIndex(len(samples), *limit) {
			some = append(some, samples[i])
		}
		samples = some
	}
	p, err := openPipeline(*model, runtime.Options{Threads: *threads, Delegate: *delegate})
	if err != nil {
		return err
	}
	defer p.Close()

	start := time.Now()
	px := newPixels()
	labels := make([]bool, len(samples))
	scores := make([]float64, len(samples))
	classes := make([]string, len(samples))
	flagged := make([]bool, len(samples))
	var invoke []time.Duration
	conf := map[string]int{"tp": 0, "fp": 0, "tn": 0, "fn": 0}
	mask, labelsMat := gocv.NewMat(), gocv.NewMat()
	defer mask.Close()
	defer labelsMat.Close()
	for i, s := range samples {
		if err := ctx.Err(); err != nil {
			return err
		}
		res, err := scoreSample(p, s, &mask, &labelsMat, px)
		if err != nil {
			return err
		}
		labels[i], scores[i] = s.mask != "", float64(res.Score)
		invoke = append(invoke, res.Timings.Invoke)
		conf[outcome(labels[i], res.Anomalous)]++
		classes[i], flagged[i] = s.label, res.Anomalous
	}
	out := evalResult{
		Model: *model, Version: p.Meta().Version, Data: *data, Perturb: *perturb, Images: len(samples),
		Delegate: p.Delegate(), Metrics: map[string]float64{}, Threshold: p.Threshold(), Confusion: conf,
		InvokeMSP50: ms(median(invoke)), Verdict: verdicts(p.Threshold(), classes, flagged),
	}
	if mk != nil {
		out.Seed, out.Source = mk.Seed, mk.Source
	}
	if out.Metrics["image_auroc"], err = imageAUROC(labels, scores); err != nil {
		return err
	}
	if out.Metrics["image_f1max"], err = imageF1Max(labels, scores); err != nil {
		return err
	}
	if out.Metrics["pixel_auroc"], out.Metrics["aupro"], err = px.metrics(); err != nil {
		return err
	}
	out.Seconds = time.Since(start).Seconds()
	fmt.Fprintf(stdout, "%s on %s (%s, %d images): image AUROC %.4f  F1Max %.4f  pixel AUROC %.4f  AUPRO %.4f\n",
		*model, *data, *perturb, len(samples), out.Metrics["image_auroc"], out.Metrics["image_f1max"],
		out.Metrics["pixel_auroc"], out.Metrics["aupro"])
	v := out.Verdict
	fmt.Fprintf(stdout, "at threshold %.4f: false alarms %d/%d (%.1f%%), recall %d/%d (%.1f%%), per class %s\n",
		v.Threshold, v.FalseAlarms, v.GoodImages, 100*v.FalseAlarmRate, v.Detected, v.DefectImages,
		100*v.Recall, perClass(v.RecallPerClass))
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// perClass formats recall per class in sorted order: "blowhole 90.4%, ...".
func perClass(m map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %.1f%%", k, 100*m[k]))
	}
	return strings.Join(parts, ", ")
}

// outcome names a verdict for the confusion counts.
func outcome(anomalous, flagged bool) string {
	switch {
	case anomalous && flagged:
		return "tp"
	case anomalous:
		return "fn"
	case flagged:
		return "fp"
	}
	return "tn"
}

// scoreSample runs one image and adds its map and mask to px. The mask is
// resized to the model input with INTER_NEAREST, as gnl test does.
func scoreSample(p *pipeline.Pipeline, s sample, mask, labels *gocv.Mat, px *pixels) (pipeline.Result, error) {
	frame, err := readImage(s.image)
	if err != nil {
		return pipeline.Result{}, err
	}
	defer frame.Close()
	res, err := p.Process(frame)
	if err != nil {
		return res, fmt.Errorf("%s: %w", s.image, err)
	}
	size := image.Pt(res.MapW, res.MapH)
	if s.mask == "" {
		px.add(res.Map, make([]int32, len(res.Map)), 0)
		return res, nil
	}
	m, err := capture.ReadImage(s.mask, gocv.IMReadGrayScale)
	defer m.Close()
	if err != nil {
		return res, fmt.Errorf("mask: %w", err)
	}
	if m.Cols() != frame.Cols() || m.Rows() != frame.Rows() {
		return res, fmt.Errorf("%s: mask is %dx%d but its image is %dx%d; masks must match their image",
			s.mask, m.Cols(), m.Rows(), frame.Cols(), frame.Rows())
	}
	gocv.Threshold(m, &m, 127, 1, gocv.ThresholdBinary)
	gocv.Resize(m, mask, size, 0, 0, gocv.InterpolationNearestNeighbor)
	n := gocv.ConnectedComponentsWithParams(*mask, labels, 8, gocv.MatTypeCV32S, gocv.CCL_DEFAULT)
	b, err := labels.DataPtrUint8() // CV_32S: reinterpret as int32
	if err != nil {
		return res, err
	}
	px.add(res.Map, unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), len(b)/4), n-1)
	return res, nil
}

// checkPerturb reconciles --perturb with DIR/perturb.json: an empty
// --perturb takes the folder's word, "vand2" needs a vand2 dump, "none" a
// folder without a marker. It returns the marker, nil for clean data.
func checkPerturb(data string, perturb *string) (*marker, error) {
	if *perturb != "" && *perturb != "none" && *perturb != "vand2" {
		return nil, usageError{fmt.Sprintf("--perturb %q: want none or vand2", *perturb)}
	}
	path := filepath.Join(data, perturbMarker)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if *perturb == "vand2" {
			return nil, fmt.Errorf("%s: not a perturbed test set (%w); write one with `gnl test --data MTD --perturb vand2 --dump %s`", data, err, data)
		}
		*perturb = "none"
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case m.Perturb != "vand2":
		return nil, fmt.Errorf("%s: says perturb %q, want \"vand2\"", path, m.Perturb)
	case *perturb == "none":
		return nil, fmt.Errorf("%s: %s is a vand2 test set; pass --perturb vand2 (or no --perturb)", path, data)
	}
	*perturb = m.Perturb
	return &m, nil
}

// subsetIndex picks `limit` evenly spaced indices of n, as gnl test's
// `subset`: unique(round_half_even(linspace(0, n-1, limit))), so that
// `--limit` scores the same images in Go and Python.
func subsetIndex(n, limit int) []int {
	if limit >= n {
		limit = n
	}
	var out []int
	step := 0.0
	if limit > 1 {
		step = float64(n-1) / float64(limit-1)
	}
	for i := range limit {
		x := float64(i) * step
		if i == limit-1 && limit > 1 {
			x = float64(n - 1) // numpy sets the end point exactly
		}
		j := int(math.RoundToEven(x))
		if len(out) == 0 || out[len(out)-1] != j {
			out = append(out, j)
		}
	}
	return out
}

// testSamples lists DIR/test/<label>/ images, with DIR/ground_truth/<label>/
// <stem>_mask.png for every label but good (MVTec layout, as gnl/data.py).
func testSamples(dir string) ([]sample, error) {
	classes, err := os.ReadDir(filepath.Join(dir, "test"))
	if err != nil {
		return nil, fmt.Errorf("%s: not an MVTec-layout folder (%w); want DIR/test/<good|defect>/ and DIR/ground_truth/<defect>/", dir, err)
	}
	var out []sample
	for _, c := range classes {
		if !c.IsDir() {
			continue
		}
		files, err := listImages(filepath.Join(dir, "test", c.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			s := sample{image: f, label: c.Name()}
			if c.Name() != "good" {
				stem := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
				s.mask = filepath.Join(dir, "ground_truth", c.Name(), stem+"_mask.png")
				if _, err := os.Stat(s.mask); err != nil {
					return nil, fmt.Errorf("%s: defect image without a mask (%w)", f, err)
				}
			}
			out = append(out, s)
		}
	}
	// By label, then file name: the order of gnl/data.py's test_samples.
	slices.SortFunc(out, func(a, b sample) int {
		return cmp.Or(strings.Compare(a.label, b.label), strings.Compare(filepath.Base(a.image), filepath.Base(b.image)))
	})
	return out, nil
}
