package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gocv.io/x/gocv"

	"gnld/capture"
	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

var imageExts = []string{".jpg", ".jpeg", ".png", ".bmp"}

// inferLine is one JSON line of `gnlctl infer`.
type inferLine struct {
	Image       string  `json:"image"`
	Score       float32 `json:"score"`
	Threshold   float32 `json:"threshold"`
	Anomalous   bool    `json:"anomalous"`
	NormalizeMS float64 `json:"normalize_ms"`
	InvokeMS    float64 `json:"invoke_ms"`
	PostMS      float64 `json:"post_ms"`
	Heatmap     string  `json:"heatmap,omitempty"`
}

// infer scores images (files, or every image in a folder) with a bundle.
func infer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("infer", stderr)
	model := fs.String("model", "", "bundle folder (required)")
	heatmaps := fs.String("heatmaps", "", "write a heatmap PNG per image into this folder")
	threads := fs.Int("threads", 1, "TFLite CPU threads")
	delegate := fs.String("delegate", runtime.XNNPACK, "xnnpack, builtin, gpu or a delegate plugin .so")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || len(pos) == 0 {
		return usageError{"infer needs --model BUNDLE and at least one IMAGE or DIR"}
	}
	images, err := expandImages(pos)
	if err != nil {
		return err
	}
	if *heatmaps != "" {
		if err := os.MkdirAll(*heatmaps, 0o755); err != nil {
			return err
		}
	}
	p, err := openPipeline(*model, runtime.Options{Threads: *threads, Delegate: *delegate})
	if err != nil {
		return err
	}
	defer p.Close()
	enc := json.NewEncoder(stdout)
	for _, path := range images {
		if err := ctx.Err(); err != nil {
			return err
		}
		line, err := inferOne(p, path, *heatmaps)
		if err != nil {
			return err
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	return nil
}

func inferOne(p *pipeline.Pipeline, path, heatmaps string) (inferLine, error) {
	frame, err := readImage(path)
	if err != nil {
		return inferLine{}, err
	}
	defer frame.Close()
	res, err := p.Process(frame)
	if err != nil {
		return inferLine{}, fmt.Errorf("%s: %w", path, err)
	}
	line := inferLine{
		Image: path, Score: res.Score, Threshold: res.Threshold, Anomalous: res.Anomalous,
		NormalizeMS: ms(res.Timings.Normalize), InvokeMS: ms(res.Timings.Invoke), PostMS: ms(res.Timings.Post),
	}
	if heatmaps != "" {
		png, err := p.Heatmap(frame, res)
		if err != nil {
			return inferLine{}, fmt.Errorf("%s: %w", path, err)
		}
		base := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		line.Heatmap = filepath.Join(heatmaps, filepath.Base(filepath.Dir(path))+"_"+base+".png")
		if err := os.WriteFile(line.Heatmap, png, 0o644); err != nil {
			return inferLine{}, err
		}
	}
	return line, nil
}

func openPipeline(dir string, opt runtime.Options) (*pipeline.Pipeline, error) {
	b, err := models.Load(dir)
	if err != nil {
		return nil, err
	}
	return pipeline.New(b, opt)
}

// readImage reads a file as 8-bit BGR, as BUNDLE.md step 1 says.
func readImage(path string) (gocv.Mat, error) {
	m, err := capture.ReadImage(path, gocv.IMReadColor)
	if err != nil {
		m.Close()
	}
	return m, err
}

// expandImages replaces each folder in paths by its image files, sorted.
func expandImages(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		files, err := listImages(p)
		if err != nil {
			return nil, err
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("%s: no images (%s)", p, strings.Join(imageExts, ", "))
		}
		out = append(out, files...)
	}
	return out, nil
}

// listImages lists a folder's image files, sorted by name.
func listImages(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && slices.Contains(imageExts, strings.ToLower(filepath.Ext(e.Name()))) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
