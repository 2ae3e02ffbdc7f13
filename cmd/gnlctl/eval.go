package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unsafe"

	"gocv.io/x/gocv"

	"gnld/pipeline"
	"gnld/runtime"
)

// perturbMarker is the file that `gnl test --perturb vand2 --dump DIR`
// writes into DIR, next to the perturbed images and masks (MVTec layout).
// gnlctl does not re-implement the perturbation's random draws; it scores
// exactly the images Python perturbed.
const perturbMarker = "perturb.json"

// evalResult is what `gnlctl eval --json` writes.
type evalResult struct {
	Model       string             `json:"model"`
	Version     string             `json:"version"`
	Data        string             `json:"data"`
	Perturb     string             `json:"perturb"`
	Images      int                `json:"images"`
	Metrics     map[string]float64 `json:"metrics"`
	Threshold   float32            `json:"threshold"`
	Confusion   map[string]int     `json:"confusion_at_threshold"`
	Seconds     float64            `json:"seconds"`
	InvokeMSP50 float64            `json:"invoke_ms_p50"`
}

type sample struct {
	image, mask, label string // mask "" for good images
}

// eval scores an MVTec-layout test set through gnld's pipeline.
func eval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("eval", stderr)
	model := fs.String("model", "", "bundle folder (required)")
	data := fs.String("data", "", "MVTec-layout folder with test/ and ground_truth/ (required)")
	perturb := fs.String("perturb", "none", `"none", or "vand2": --data is a folder written by `+
		"`gnl test --perturb vand2 --dump DIR`")
	jsonOut := fs.String("json", "", "write the result as JSON to this file")
	threads := fs.Int("threads", 1, "TFLite CPU threads")
	limit := fs.Int("limit", 0, "score only every k-th image so that at most this many are used (0: all)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || *data == "" || len(pos) > 0 {
		return usageError{"eval needs --model BUNDLE and --data DIR"}
	}
	if err := checkPerturb(*data, *perturb); err != nil {
		return err
	}
	samples, err := testSamples(*data)
	if err != nil {
		return err
	}
	if *limit > 0 && len(samples) > *limit {
		step := float64(len(samples)) / float64(*limit)
		var some []sample
		for i := range *limit {
			some = append(some, samples[int(float64(i)*step)])
		}
		samples = some
	}
	p, err := openPipeline(*model, runtime.Options{Threads: *threads})
	if err != nil {
		return err
	}
	defer p.Close()

	start := time.Now()
	px := newPixels()
	labels := make([]bool, len(samples))
	scores := make([]float64, len(samples))
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
	}
	out := evalResult{
		Model: *model, Version: p.Meta().Version, Data: *data, Perturb: *perturb, Images: len(samples),
		Metrics: map[string]float64{}, Threshold: p.Threshold(), Confusion: conf,
		InvokeMSP50: ms(median(invoke)),
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
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
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
	m := gocv.IMRead(s.mask, gocv.IMReadGrayScale)
	defer m.Close()
	if m.Empty() {
		return res, fmt.Errorf("%s: cannot read mask", s.mask)
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

// checkPerturb makes sure a vand2 folder really holds perturbed images.
func checkPerturb(data, perturb string) error {
	switch perturb {
	case "none":
		return nil
	case "vand2":
		b, err := os.ReadFile(filepath.Join(data, perturbMarker))
		if err != nil {
			return fmt.Errorf("%s: not a perturbed test set (%w); write one with `gnl test --data MTD --perturb vand2 --dump %s`", data, err, data)
		}
		var m struct{ Perturb string }
		if err := json.Unmarshal(b, &m); err != nil || m.Perturb != "vand2" {
			return fmt.Errorf("%s: says perturb %q, want \"vand2\"", filepath.Join(data, perturbMarker), m.Perturb)
		}
		return nil
	}
	return usageError{fmt.Sprintf("--perturb %q: want none or vand2", perturb)}
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
	slices.SortFunc(out, func(a, b sample) int { return strings.Compare(a.label+"/"+a.image, b.label+"/"+b.image) })
	return out, nil
}
