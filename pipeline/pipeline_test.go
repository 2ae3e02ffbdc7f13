package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/runtime"
)

func newTiny(t testing.TB, dir string) *Pipeline {
	t.Helper()
	b, err := models.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(b, runtime.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestProcess(t *testing.T) {
	p := newTiny(t, "../models/testdata/tiny")
	frame := gocv.IMRead(testImages(t)[0], gocv.IMReadColor)
	defer frame.Close()
	res, err := p.Process(frame)
	if err != nil {
		t.Fatal(err)
	}
	if res.MapW != 160 || res.MapH != 128 || len(res.Map) != 160*128 {
		t.Fatalf("map %dx%d (%d values)", res.MapW, res.MapH, len(res.Map))
	}
	if res.Threshold != float32(p.Meta().Threshold.Value) || res.Anomalous != (res.Score >= res.Threshold) {
		t.Errorf("threshold %v score %v anomalous %v", res.Threshold, res.Score, res.Anomalous)
	}
	if res.Timings.Invoke <= 0 || res.Timings.Normalize <= 0 || res.Timings.Post <= 0 {
		t.Errorf("timings %+v", res.Timings)
	}
	p.SetThreshold(res.Score + 1)
	if res, _ = p.Process(frame); res.Anomalous {
		t.Error("anomalous above an overridden threshold")
	}
	p.SetThreshold(res.Score)
	if res, _ = p.Process(frame); !res.Anomalous {
		t.Error("score == threshold must be anomalous")
	}
	if m8 := p.RawMap8(res); len(m8) != len(res.Map) {
		t.Errorf("RawMap8: %d bytes", len(m8))
	}
	png, err := p.Heatmap(frame, res)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("Heatmap: %v, %d bytes", err, len(png))
	}
}

// A frame already at the input size skips the resize; the result must be the
// same as for the frame that is resized to it.
func TestProcessInputSize(t *testing.T) {
	p := newTiny(t, "../models/testdata/tiny-float")
	frame := gocv.IMRead(testImages(t)[2], gocv.IMReadColor)
	defer frame.Close()
	small := gocv.NewMat()
	defer small.Close()
	gocv.Resize(frame, &small, image.Pt(160, 128), 0, 0, gocv.InterpolationLinear)
	a, err := p.Process(frame)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Process(small)
	if err != nil {
		t.Fatal(err)
	}
	if a.Score != b.Score {
		t.Errorf("score %v for the full frame, %v for it resized", a.Score, b.Score)
	}
}

func TestProcessBadFrames(t *testing.T) {
	p := newTiny(t, "../models/testdata/tiny")
	empty := gocv.NewMat()
	grey := gocv.NewMatWithSize(100, 100, gocv.MatTypeCV8U)
	bgra := gocv.NewMatWithSize(100, 100, gocv.MatTypeCV8UC4)
	defer empty.Close()
	defer grey.Close()
	defer bgra.Close()
	for name, m := range map[string]gocv.Mat{"empty": empty, "grey": grey, "bgra": bgra} {
		_, err := p.Process(m)
		if !errors.Is(err, ErrFrame) {
			t.Errorf("%s: error %v, want ErrFrame", name, err)
		}
		if name != "empty" && !strings.Contains(err.Error(), "want 8-bit BGR") {
			t.Errorf("%s: error %q does not say what is wanted", name, err)
		}
	}
}

// TestProcessAllocs: in steady state Process allocates no Go memory.
func TestProcessAllocs(t *testing.T) {
	for _, dir := range []string{"../models/testdata/tiny", "../models/testdata/tiny-float"} {
		p := newTiny(t, dir)
		frame := gocv.IMRead(testImages(t)[0], gocv.IMReadColor)
		allocs := testing.AllocsPerRun(20, func() {
			if _, err := p.Process(frame); err != nil {
				t.Fatal(err)
			}
		})
		frame.Close()
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per Process, want 0", dir, allocs)
		}
	}
}

// A bundle with a full-width memory of normal patches asked to run on the
// GPU delegate runs on XNNPACK instead, and says why in one warning; a
// projected memory (model.json's memory.dims) and a bundle without one
// still get the GPU delegate's usual fallback chain (here, without an
// OpenCL GPU or with one, never this warning).
func TestFullWidthMemoryBundleAvoidsGPU(t *testing.T) {
	for _, tc := range []struct {
		memory *models.Memory
		warned bool
	}{
		{&models.Memory{Size: 4096, Weight: 0.05}, true},
		{&models.Memory{Size: 4096, Dims: 32, Weight: 0.05}, false},
		{nil, false},
	} {
		b, err := models.Load("../models/testdata/tiny")
		if err != nil {
			t.Fatal(err)
		}
		b.Meta.Memory = tc.memory
		var logs bytes.Buffer
		prev := slog.Default()
		slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
		p, err := New(b, runtime.Options{Threads: 1, Delegate: runtime.GPU})
		slog.SetDefault(prev)
		if err != nil {
			t.Fatal(err)
		}
		if tc.warned && p.Delegate() != runtime.XNNPACK {
			t.Errorf("%+v: delegate %q, want %q", tc.memory, p.Delegate(), runtime.XNNPACK)
		}
		if n := strings.Count(logs.String(), "memory of normal patches"); n != map[bool]int{true: 1}[tc.warned] ||
			tc.warned && !strings.Contains(logs.String(), "level=WARN") {
			t.Errorf("%+v: %d warnings naming the memory, want warned=%v: %q", tc.memory, n, tc.warned, logs.String())
		}
		p.Close()
	}
	if got := newTiny(t, "../models/testdata/tiny").Meta().Memory; got != nil {
		t.Errorf("tiny bundle without a memory reads as %+v", got)
	}
}

// Cameras on one Model share its interpreters: pipelines scoring frames
// from their own goroutines on one interpreter give each frame the score a
// pipeline of its own gives it, and the interpreters stay open until the
// Model and every pipeline are closed.
func TestCamerasShareOneInterpreter(t *testing.T) {
	b, err := models.Load("../models/testdata/tiny")
	if err != nil {
		t.Fatal(err)
	}
	paths := testImages(t)
	frames := make([]gocv.Mat, len(paths))
	want := make([]float32, len(paths))
	alone := newTiny(t, "../models/testdata/tiny")
	for i, path := range paths {
		frames[i] = gocv.IMRead(path, gocv.IMReadColor)
		defer frames[i].Close()
		res, err := alone.Process(frames[i])
		if err != nil {
			t.Fatal(err)
		}
		want[i] = res.Score
	}
	m, err := Load(b, runtime.Options{Threads: 1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Interpreters() != 1 {
		t.Fatalf("%d interpreters, want 1", m.Interpreters())
	}
	const cameras, rounds = 4, 5
	pipes := make([]*Pipeline, cameras)
	for i := range pipes {
		pipes[i] = m.Pipeline()
	}
	m.Close() // the pipelines keep the interpreter
	errs := make(chan error, cameras)
	for c, p := range pipes {
		go func() {
			for r := range rounds {
				i := (c + r) % len(frames)
				res, err := p.Process(frames[i])
				if err == nil && res.Score != want[i] {
					err = fmt.Errorf("camera %d, frame %d: score %v on the shared interpreter, %v alone", c, i, res.Score, want[i])
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range cameras {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, p := range pipes[:cameras-1] {
		p.Close()
	}
	if _, err := pipes[cameras-1].Process(frames[0]); err != nil {
		t.Errorf("the last open pipeline: %v", err)
	}
	pipes[cameras-1].Close()
	if m.all != nil {
		t.Error("the interpreters are still open after the Model and every pipeline closed")
	}
	if n := Interpreters(0, 8, 1); n < 1 || n > 8 {
		t.Errorf("Interpreters(default, 8 cameras, 1 thread) = %d", n)
	}
	if n := Interpreters(0, 1, 1); n != 1 {
		t.Errorf("Interpreters(default, 1 camera) = %d, want 1", n)
	}
	if n := Interpreters(3, 8, 1); n != 3 {
		t.Errorf("Interpreters(setting 3, 8 cameras) = %d, want 3", n)
	}
}
