// Package pipeline turns camera frames into anomaly results with a model
// bundle: normalise (BUNDLE.md steps 1-5), run the model (package runtime),
// post-process (dequantize, resize, blur, max).
//
// Lifecycle: New once per camera; Process for every frame, from one
// goroutine at a time; Close once when the camera stops. A Pipeline owns its
// interpreter and all of its buffers, so it is NOT safe for concurrent use:
// run one per camera, in that camera's goroutine. In steady state Process
// allocates nothing (TestProcessAllocs), neither Go memory nor Mats.
package pipeline

import (
	"errors"
	"fmt"
	"image"
	"log/slog"
	"math"
	"time"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/runtime"
)

// Result is one frame's outcome.
type Result struct {
	Score     float32 // max of the blurred map
	Threshold float32 // the threshold it was compared with
	Anomalous bool    // Score >= Threshold
	// Map is the blurred anomaly map at the model's input size, row-major,
	// MapW x MapH. It aliases the Pipeline's buffer: valid until the next
	// Process or Close; copy it to keep it.
	Map        []float32
	MapW, MapH int
	Timings    Timings
}

// Timings are the wall times of the three stages of Process.
type Timings struct {
	Normalize, Invoke, Post time.Duration
}

// Pipeline runs one bundle for one camera. Not goroutine-safe.
type Pipeline struct {
	ip        *runtime.Interpreter
	meta      models.Meta
	w, h      int // model input size
	threshold float32
	sigma     float64
	rgb       bool

	// Exactly one of these tables is set, matching the input tensor type.
	lutF32 *[3][256]float32
	lutI8  *[3][256]int8
	lutU8  *[3][256]uint8

	resized gocv.Mat // frame at w x h, 8UC3 BGR
	raw     gocv.Mat // model output, dequantized, h x w 32F
	up      gocv.Mat // raw resized to w x h
	blurred gocv.Mat // up blurred: Result.Map
	rawF32  []float32
	mapF32  []float32
	map8    []byte
}

// New makes a pipeline for bundle b. It checks that the model's tensors
// match model.json (sizes, types, input quantization), because the lookup
// tables and the post-processing are built from model.json.
//
// A bundle with a memory of normal patches runs on XNNPACK when the GPU
// delegate is asked for, with one warning: on Mesa's rusticl the GPU
// delegate's maps of such a bundle are half their range off the CPU's
// (runtime.TestGPUParity), and a wrong map is a wrong verdict.
func New(b *models.Bundle, opt runtime.Options) (*Pipeline, error) {
	if d, err := runtime.ParseDelegate(opt.Delegate); err == nil && d == runtime.GPU && b.Meta.Memory != nil {
		slog.Warn("delegate not applied, running on "+runtime.XNNPACK+" instead", "model", b.ModelPath, "delegate", d,
			"err", "the bundle has a memory of normal patches, whose maps TFLite's GPU delegate does not reproduce; "+
				"gnld runs it on the CPU (XNNPACK)")
		opt.Delegate = runtime.XNNPACK
	}
	ip, err := runtime.New(b.ModelPath, opt)
	if err != nil {
		return nil, err
	}
	m := b.Meta
	p := &Pipeline{
		ip: ip, meta: m, w: m.Input.Width, h: m.Input.Height,
		threshold: float32(m.Threshold.Value), sigma: m.Postprocess.BlurSigma,
		rgb: m.Input.ChannelOrder == "RGB",
	}
	if err := p.checkTensors(b); err != nil {
		ip.Close()
		return nil, err
	}
	switch in := ip.Input().Info(); in.DType {
	case runtime.Float32:
		p.lutF32 = lookupTables[float32](m.Input)
	case runtime.Int8:
		p.lutI8 = lookupTables[int8](m.Input)
	case runtime.Uint8:
		p.lutU8 = lookupTables[uint8](m.Input)
	}
	oh, ow := m.Output.Height, m.Output.Width
	p.resized = gocv.NewMatWithSize(p.h, p.w, gocv.MatTypeCV8UC3)
	p.raw = gocv.NewMatWithSize(oh, ow, gocv.MatTypeCV32F)
	p.up = gocv.NewMatWithSize(p.h, p.w, gocv.MatTypeCV32F)
	p.blurred = gocv.NewMatWithSize(p.h, p.w, gocv.MatTypeCV32F)
	p.map8 = make([]byte, p.w*p.h)
	// Views onto Mat memory; the Mats keep their size, so these stay valid.
	p.rawF32, _ = p.raw.DataPtrFloat32()
	p.mapF32, _ = p.blurred.DataPtrFloat32()
	return p, nil
}

func (p *Pipeline) checkTensors(b *models.Bundle) error {
	in, out := p.ip.Input().Info(), p.ip.Output().Info()
	mi, mo := b.Meta.Input, b.Meta.Output
	fail := func(what string, got, want any) error {
		return fmt.Errorf("%s: model %s is %v but %s says %v; re-export the bundle with `gnl export`",
			b.ModelPath, what, got, models.MetaFile, want)
	}
	switch {
	case in.Shape[1] != mi.Height || in.Shape[2] != mi.Width:
		return fail("input HxW", fmt.Sprint(in.Shape[1], "x", in.Shape[2]), fmt.Sprint(mi.Height, "x", mi.Width))
	case string(in.DType) != mi.DType:
		return fail("input dtype", in.DType, mi.DType)
	case in.DType != runtime.Float32 && (in.Quant.ZeroPoint != int32(mi.Quantization.ZeroPoint) ||
		math.Abs(float64(in.Quant.Scale)-mi.Quantization.Scale) > 1e-6*mi.Quantization.Scale):
		return fail("input quantization", in.Quant, mi.Quantization)
	case out.Shape[1] != mo.Height || out.Shape[2] != mo.Width:
		return fail("output HxW", fmt.Sprint(out.Shape[1], "x", out.Shape[2]), fmt.Sprint(mo.Height, "x", mo.Width))
	case string(out.DType) != mo.DType:
		return fail("output dtype", out.DType, mo.DType)
	}
	return nil
}

// SetThreshold overrides the bundle's threshold (per-camera setting).
func (p *Pipeline) SetThreshold(t float32) { p.threshold = t }

// Threshold is the threshold Process compares scores with.
func (p *Pipeline) Threshold() float32 { return p.threshold }

// Meta is the bundle's metadata.
func (p *Pipeline) Meta() models.Meta { return p.meta }

// Delegate says where the model runs ("xnnpack", "builtin", "gpu" or a
// plugin path).
func (p *Pipeline) Delegate() string { return p.ip.Delegate() }

// Placement says how many nodes each delegate took and the model's MACs.
func (p *Pipeline) Placement() runtime.Placement { return p.ip.Placement() }

// ErrFrame is wrapped by errors about unusable frames (empty, wrong type):
// the camera's problem, not the model's.
var ErrFrame = errors.New("unusable frame")

// Process scores one 8-bit BGR frame of any size. The frame is only read.
func (p *Pipeline) Process(frame gocv.Mat) (Result, error) {
	t0 := time.Now()
	if err := p.normalize(frame); err != nil {
		return Result{}, err
	}
	t1 := time.Now()
	if err := p.ip.Invoke(); err != nil {
		return Result{}, err
	}
	t2 := time.Now()
	score := p.post()
	t3 := time.Now()
	return Result{
		Score: score, Threshold: p.threshold, Anomalous: score >= p.threshold,
		Map: p.mapF32, MapW: p.w, MapH: p.h,
		Timings: Timings{Normalize: t1.Sub(t0), Invoke: t2.Sub(t1), Post: t3.Sub(t2)},
	}, nil
}

// normalize resizes frame to the input size (INTER_LINEAR) and writes it
// through the lookup tables straight into the input tensor.
func (p *Pipeline) normalize(frame gocv.Mat) error {
	if frame.Empty() {
		return fmt.Errorf("pipeline: %w: empty frame (the camera returned no image?)", ErrFrame)
	}
	if t := frame.Type(); t != gocv.MatTypeCV8UC3 {
		return fmt.Errorf("pipeline: %w: frame type %v with %d channels, want 8-bit BGR (CV_8UC3); convert grey or BGRA frames with cvtColor first",
			ErrFrame, t, frame.Channels())
	}
	src := frame
	// cv::resize to the same size is a plain copy, so skip it.
	if frame.Cols() != p.w || frame.Rows() != p.h || !frame.IsContinuous() {
		gocv.Resize(frame, &p.resized, image.Pt(p.w, p.h), 0, 0, gocv.InterpolationLinear)
		src = p.resized
	}
	px, err := src.DataPtrUint8()
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	in := p.ip.Input()
	switch {
	case p.lutF32 != nil:
		fill(in.Float32s(), px, p.lutF32, p.rgb)
	case p.lutI8 != nil:
		fill(in.Int8s(), px, p.lutI8, p.rgb)
	default:
		fill(in.Uint8s(), px, p.lutU8, p.rgb)
	}
	return nil
}

// post dequantizes the output into raw and post-processes it.
func (p *Pipeline) post() float32 {
	out := p.ip.Output()
	q := out.Info().Quant
	switch {
	case out.Float32s() != nil:
		copy(p.rawF32, out.Float32s())
	case out.Int8s() != nil:
		for i, v := range out.Int8s() {
			p.rawF32[i] = float32(int32(v)-q.ZeroPoint) * q.Scale
		}
	default:
		for i, v := range out.Uint8s() {
			p.rawF32[i] = float32(int32(v)-q.ZeroPoint) * q.Scale
		}
	}
	return p.postRaw()
}

// postRaw resizes raw to the input size, blurs it (BUNDLE.md
// post-processing) into blurred and returns its maximum.
func (p *Pipeline) postRaw() float32 {
	gocv.Resize(p.raw, &p.up, image.Pt(p.w, p.h), 0, 0, gocv.InterpolationLinear)
	gocv.GaussianBlur(p.up, &p.blurred, image.Pt(0, 0), p.sigma, p.sigma, gocv.BorderDefault)
	score := float32(math.Inf(-1))
	for _, v := range p.mapF32 {
		score = max(score, v)
	}
	return score
}

// RawMap returns the model's map of the last Process, dequantized, h x w
// (output size). It aliases the Pipeline's buffer, like Result.Map.
func (p *Pipeline) RawMap() (m []float32, w, h int) {
	return p.rawF32, p.meta.Output.Width, p.meta.Output.Height
}

// Close frees the interpreter and the Mats. Results' maps become invalid.
func (p *Pipeline) Close() {
	if p.ip == nil {
		return
	}
	p.ip.Close()
	p.ip = nil
	for _, m := range []*gocv.Mat{&p.resized, &p.raw, &p.up, &p.blurred} {
		m.Close()
	}
	p.rawF32, p.mapF32 = nil, nil
}
