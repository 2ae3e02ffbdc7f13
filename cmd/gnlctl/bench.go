package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gocv.io/x/gocv"

	"gnld/runtime"
)

// benchResult is one thread count's medians.
type benchResult struct {
	Model       string  `json:"model"`
	Threads     int     `json:"threads"`
	Delegate    string  `json:"delegate"`
	N           int     `json:"n"`
	Frame       string  `json:"frame"`
	NormalizeMS float64 `json:"normalize_ms"`
	InvokeMS    float64 `json:"invoke_ms"`
	PostMS      float64 `json:"post_ms"`
	TotalMS     float64 `json:"total_ms"`
	FPS         float64 `json:"fps"`
	PeakRSSMB   float64 `json:"peak_rss_mb"`
}

const benchWarmup = 5

// bench measures median per-stage latency of the pipeline on one frame.
func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	model := fs.String("model", "", "bundle folder (required)")
	threadList := fs.String("threads", "1,2", "comma-separated TFLite thread counts")
	n := fs.Int("n", 50, "timed frames per thread count (after 5 warm-up frames)")
	imagePath := fs.String("image", "", "frame to use (default: the first MTD test/good image, else a synthetic 1024x768 frame)")
	delegate := fs.String("delegate", "", `"cpu" (default), "gpu" or a delegate plugin .so`)
	asJSON := fs.Bool("json", false, "print one JSON object per thread count")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || len(pos) > 0 || *n < 1 {
		return usageError{"bench needs --model BUNDLE, --n >= 1 and no positional arguments"}
	}
	var threads []int
	for _, s := range strings.Split(*threadList, ",") {
		t, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || t < 1 {
			return usageError{fmt.Sprintf("--threads %q: want positive integers like 1,2", *threadList)}
		}
		threads = append(threads, t)
	}
	frame, name, err := benchFrame(*imagePath)
	if err != nil {
		return err
	}
	defer frame.Close()
	if !*asJSON {
		fmt.Fprintf(stdout, "%-8s %-12s %-10s %-10s %-10s %-10s %-8s %s\n", "threads", "delegate", "normalize", "invoke", "post", "total", "fps", "peak_rss")
	}
	for _, t := range threads {
		r, err := benchOne(ctx, *model, runtime.Options{Threads: t, Delegate: *delegate}, frame, *n)
		if err != nil {
			return err
		}
		r.Frame = name
		if *asJSON {
			if err := json.NewEncoder(stdout).Encode(r); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(stdout, "%-8d %-12s %-10s %-10s %-10s %-10s %-8.1f %.0f MB\n", r.Threads, r.Delegate,
			msStr(r.NormalizeMS), msStr(r.InvokeMS), msStr(r.PostMS), msStr(r.TotalMS), r.FPS, r.PeakRSSMB)
	}
	return nil
}

func msStr(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) + "ms" }

func benchOne(ctx context.Context, model string, opt runtime.Options, frame gocv.Mat, n int) (benchResult, error) {
	p, err := openPipeline(model, opt)
	if err != nil {
		return benchResult{}, err
	}
	defer p.Close()
	var norm, inv, post, total []time.Duration
	for i := range benchWarmup + n {
		if err := ctx.Err(); err != nil {
			return benchResult{}, err
		}
		t0 := time.Now()
		res, err := p.Process(frame)
		if err != nil {
			return benchResult{}, err
		}
		if i >= benchWarmup {
			total = append(total, time.Since(t0))
			norm = append(norm, res.Timings.Normalize)
			inv = append(inv, res.Timings.Invoke)
			post = append(post, res.Timings.Post)
		}
	}
	rss, err := peakRSS()
	if err != nil {
		return benchResult{}, err
	}
	tot := median(total)
	return benchResult{
		Model: model, Threads: opt.Threads, Delegate: p.Delegate(), N: n,
		NormalizeMS: ms(median(norm)), InvokeMS: ms(median(inv)), PostMS: ms(median(post)),
		TotalMS: ms(tot), FPS: float64(time.Second) / float64(tot), PeakRSSMB: rss,
	}, nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchFrame is the frame to time: the given image, an MTD image, or a
// synthetic one, so that bench runs anywhere.
func benchFrame(path string) (gocv.Mat, string, error) {
	if path == "" {
		if mtd := os.Getenv("MTD"); mtd != "" {
			if files, _ := listImages(filepath.Join(mtd, "test", "good")); len(files) > 0 {
				path = files[0]
			}
		}
	}
	if path != "" {
		m, err := readImage(path)
		return m, path, err
	}
	m := gocv.NewMatWithSize(768, 1024, gocv.MatTypeCV8UC3)
	gocv.Circle(&m, image.Pt(512, 384), 200, color.RGBA{R: 128, G: 128, B: 128}, -1)
	return m, "synthetic 1024x768", nil
}

// peakRSS is this process's peak resident set (VmHWM) in MB.
func peakRSS() (float64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("peak RSS: no VmHWM in /proc/self/status")
}
