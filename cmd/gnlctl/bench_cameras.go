package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

// camerasResult is one camera count's throughput and memory: that many
// cameras on one bundle, sharing its interpreters as gnld's cameras do.
type camerasResult struct {
	Model        string  `json:"model"`
	Cameras      int     `json:"cameras"`
	Interpreters int     `json:"interpreters"`
	Threads      int     `json:"threads"`
	Delegate     string  `json:"delegate"`
	N            int     `json:"n"`              // timed frames per camera
	FPS          float64 `json:"fps"`            // frames scored per second, all cameras together
	FPSPerCamera float64 `json:"fps_per_camera"` // FPS / cameras
	LatencyMS    float64 `json:"latency_ms"`     // median frame, wait for an interpreter included
	WaitMS       float64 `json:"wait_ms"`        // median wait for an interpreter
	InvokeMS     float64 `json:"invoke_ms"`      // median invoke
	PeakRSSMB    float64 `json:"peak_rss_mb"`    // the whole process's peak (VmHWM), a process per camera count
}

// benchCameras runs each camera count in a process of its own, so that
// each peak RSS is that count's alone, as gnld's would be.
func benchCameras(ctx context.Context, model string, counts []int, opt runtime.Options, interpreters, n int,
	image string, asJSON bool, stdout, stderr io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if !asJSON {
		fmt.Fprintf(stdout, "%-8s %-13s %-8s %-8s %-12s %-10s %-10s %s\n", "cameras", "interpreters", "fps", "fps/cam", "latency", "wait", "invoke", "peak_rss")
	}
	best := 0.0
	for _, k := range counts {
		args := []string{"bench", "--model", model, "--cameras", strconv.Itoa(k), "--in-process",
			"--threads", strconv.Itoa(opt.Threads), "--delegate", opt.Delegate, "--interpreters", strconv.Itoa(interpreters),
			"--n", strconv.Itoa(n), "--json"}
		if image != "" {
			args = append(args, "--image", image)
		}
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Stdout, cmd.Stderr = &out, stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("bench --cameras %d: %w", k, err)
		}
		var r camerasResult
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			return fmt.Errorf("bench --cameras %d: %w", k, err)
		}
		best = max(best, r.FPS)
		if asJSON {
			if err := json.NewEncoder(stdout).Encode(r); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(stdout, "%-8d %-13d %-8.1f %-8.1f %-12s %-10s %-10s %.0f MB\n", r.Cameras, r.Interpreters, r.FPS,
			r.FPSPerCamera, msStr(r.LatencyMS), msStr(r.WaitMS), msStr(r.InvokeMS), r.PeakRSSMB)
	}
	if !asJSON {
		fmt.Fprintf(stdout, "cameras at 10 fps each: %d (the best total, %.1f fps, over 10)\n", int(best/10), best)
	}
	return nil
}

// benchCamerasHere is one camera count in this process: k goroutines, each
// a camera scoring `n` frames (after the warm-up) as fast as it can, on one
// pipeline.Model.
func benchCamerasHere(ctx context.Context, model string, k int, opt runtime.Options, interpreters, n int,
	frame gocv.Mat) (camerasResult, error) {
	if err := resetPeakRSS(); err != nil {
		return camerasResult{}, err
	}
	b, err := models.Load(model)
	if err != nil {
		return camerasResult{}, err
	}
	interpreters = pipeline.Interpreters(interpreters, k, opt.Threads)
	m, err := pipeline.Load(b, opt, interpreters)
	if err != nil {
		return camerasResult{}, err
	}
	pipes := make([]*pipeline.Pipeline, k)
	frames := make([]gocv.Mat, k) // a camera's frame is its own, as a capture's is
	for i := range pipes {
		pipes[i] = m.Pipeline()
		frames[i] = frame.Clone()
	}
	delegate := m.Delegate()
	m.Close()
	defer func() {
		for i := range pipes {
			pipes[i].Close()
			frames[i].Close()
		}
	}()
	type timing struct{ total, wait, invoke time.Duration }
	got := make([][]timing, k)
	errs := make([]error, k)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(k)
	done.Add(k)
	for i := range k {
		go func() {
			defer done.Done()
			for range benchWarmup {
				if _, errs[i] = pipes[i].Process(frames[i]); errs[i] != nil {
					ready.Done()
					return
				}
			}
			ready.Done()
			<-start
			for range n {
				if errs[i] = ctx.Err(); errs[i] != nil {
					return
				}
				s := time.Now()
				res, err := pipes[i].Process(frames[i])
				if err != nil {
					errs[i] = err
					return
				}
				got[i] = append(got[i], timing{time.Since(s), res.Timings.Wait, res.Timings.Invoke})
			}
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	wall := time.Since(t0)
	for _, err := range errs {
		if err != nil {
			return camerasResult{}, err
		}
	}
	var total, wait, invoke []time.Duration
	for _, g := range got {
		for _, t := range g {
			total, wait, invoke = append(total, t.total), append(wait, t.wait), append(invoke, t.invoke)
		}
	}
	rss, err := peakRSS()
	if err != nil {
		return camerasResult{}, err
	}
	fps := float64(k*n) / wall.Seconds()
	return camerasResult{
		Model: model, Cameras: k, Interpreters: interpreters, Threads: opt.Threads, Delegate: delegate, N: n,
		FPS: fps, FPSPerCamera: fps / float64(k), LatencyMS: ms(median(total)), WaitMS: ms(median(wait)),
		InvokeMS: ms(median(invoke)), PeakRSSMB: rss,
	}, nil
}
