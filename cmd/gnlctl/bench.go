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

// benchResult is one delegate and thread count's medians.
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
	PeakRSSMB   float64 `json:"peak_rss_mb"` // this run's peak (VmHWM reset before it)
	GMAC        float64 `json:"gmac"`        // the model's multiply-accumulates per frame
	GMACPerS    float64 `json:"gmac_per_s"`  // achieved in Invoke: GMAC / median invoke time
	Placement   string  `json:"placement"`   // nodes per delegate, ops left on builtin kernels
}

const benchWarmup = 5

// bench measures median per-stage latency of the pipeline on one frame, per
// delegate and thread count, with the model's placement (nodes per
// delegate), its GMAC per frame and the GMAC/s achieved in Invoke.
func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	model := fs.String("model", "", "bundle folder (required)")
	threadList := fs.String("threads", "1,2", "comma-separated TFLite thread counts")
	n := fs.Int("n", 50, "timed frames per thread count (after 5 warm-up frames)")
	imagePath := fs.String("image", "", "frame to use (default: the first MTD test/good image, else a synthetic 1024x768 frame)")
	delegateList := fs.String("delegate", runtime.XNNPACK, "comma-separated delegates to time: xnnpack, builtin, gpu or a delegate plugin .so")
	asJSON := fs.Bool("json", false, "print one JSON object per thread count")
	cameraList := fs.String("cameras", "", "comma-separated camera counts (e.g. 1,2,4,8): that many cameras on one bundle, "+
		"sharing its interpreters as gnld's do, each count in a process of its own; total FPS and peak RSS. "+
		"Uses the first --threads and --delegate")
	interpreters := fs.Int("interpreters", 0, "with --cameras: interpreters the cameras share (0: gnld's default, GNLD_INTERPRETERS)")
	inProcess := fs.Bool("in-process", false, "with one --cameras count: run it in this process (what each child of --cameras runs)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || len(pos) > 0 || *n < 1 {
		return usageError{"bench needs --model BUNDLE, --n >= 1 and no positional arguments"}
	}
	threads, err := positiveInts("threads", *threadList, "1,2")
	if err != nil {
		return err
	}
	var delegates []string
	for _, d := range strings.Split(*delegateList, ",") {
		d, err := runtime.ParseDelegate(strings.TrimSpace(d))
		if err != nil {
			return usageError{"--delegate: " + err.Error()}
		}
		delegates = append(delegates, d)
	}
	if *cameraList != "" {
		counts, err := positiveInts("cameras", *cameraList, "1,2,4,8")
		if err != nil {
			return err
		}
		opt := runtime.Options{Threads: threads[0], Delegate: delegates[0]}
		if !*inProcess {
			return benchCameras(ctx, *model, counts, opt, *interpreters, *n, *imagePath, *asJSON, stdout, stderr)
		}
		if len(counts) != 1 {
			return usageError{"--in-process runs one --cameras count"}
		}
		frame, _, err := benchFrame(*imagePath)
		if err != nil {
			return err
		}
		defer frame.Close()
		r, err := benchCamerasHere(ctx, *model, counts[0], opt, *interpreters, *n, frame)
		if err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(r)
	}
	frame, name, err := benchFrame(*imagePath)
	if err != nil {
		return err
	}
	defer frame.Close()
	if !*asJSON {
		fmt.Fprintf(stdout, "%-8s %-10s %-10s %-10s %-10s %-10s %-8s %-9s %s\n", "threads", "delegate", "normalize", "invoke", "post", "total", "fps", "GMAC/s", "peak_rss")
	}
	placed := map[string]bool{}
	for _, d := range delegates {
		for _, t := range threads {
			r, err := benchOne(ctx, *model, runtime.Options{Threads: t, Delegate: d}, frame, *n)
			if err != nil {
				return err
			}
			if r.Delegate != d {
				// The warning on stderr says why; timing the fallback
				// under this delegate's name would mislead.
				fmt.Fprintf(stderr, "bench: %s is not available here (it ran on %s); skipped\n", d, r.Delegate)
				break
			}
			r.Frame = name
			if *asJSON {
				if err := json.NewEncoder(stdout).Encode(r); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintf(stdout, "%-8d %-10s %-10s %-10s %-10s %-10s %-8.1f %-9.1f %.0f MB\n", r.Threads, r.Delegate,
				msStr(r.NormalizeMS), msStr(r.InvokeMS), msStr(r.PostMS), msStr(r.TotalMS), r.FPS, r.GMACPerS, r.PeakRSSMB)
			if !placed[d] {
				placed[d] = true
				fmt.Fprintf(stdout, "         %s: %s; %.3f GMAC per frame\n", d, r.Placement, r.GMAC)
			}
		}
	}
	return nil
}

// positiveInts parses flag --name's comma-separated list of positive
// integers (like example).
func positiveInts(name, list, example string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 1 {
			return nil, usageError{fmt.Sprintf("--%s %q: want positive integers like %s", name, list, example)}
		}
		out = append(out, v)
	}
	return out, nil
}

func msStr(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) + "ms" }

func benchOne(ctx context.Context, model string, opt runtime.Options, frame gocv.Mat, n int) (benchResult, error) {
	if err := resetPeakRSS(); err != nil {
		return benchResult{}, err
	}
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
	tot, invoke := median(total), median(inv)
	pl := p.Placement()
	gmac := float64(pl.MACs) / 1e9
	return benchResult{
		Model: model, Threads: opt.Threads, Delegate: p.Delegate(), N: n,
		NormalizeMS: ms(median(norm)), InvokeMS: ms(invoke), PostMS: ms(median(post)),
		TotalMS: ms(tot), FPS: float64(time.Second) / float64(tot), PeakRSSMB: rss,
		GMAC: gmac, GMACPerS: gmac / invoke.Seconds(), Placement: pl.String(),
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

// resetPeakRSS sets VmHWM back to the current resident set (Linux 4.0+),
// so that each run's peak is its own and not the largest so far.
func resetPeakRSS() error {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return fmt.Errorf("peak RSS: cannot reset it: %w", err)
	}
	return nil
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
