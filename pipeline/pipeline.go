// Package pipeline turns camera frames into anomaly results with a model
// bundle: normalise (BUNDLE.md steps 1-5), run the model (package runtime),
// post-process (dequantize, resize, blur, max).
//
// Lifecycle: Load a bundle once (a Model: its interpreters), then one
// Pipeline per camera from Model.Pipeline; Process for every frame, from one
// goroutine at a time; Close each Pipeline when its camera stops and the
// Model when no new camera will need it (its interpreters go with the last
// of the two). New does both for a single camera. Cameras on one Model
// share its interpreters, and so the model's weights: a Pipeline holds only
// its frame and map buffers, and borrows an interpreter for the few
// milliseconds of writing the input, invoking and reading the output. A
// Pipeline is NOT safe for concurrent use: run one per camera, in that
// camera's goroutine. In steady state Process allocates nothing
// (TestProcessAllocs), neither Go memory nor Mats.
package pipeline

import (
	"errors"
	"fmt"
	"image"
	"log/slog"
	"math"
	goruntime "runtime"
	"slices"
	"sync"
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

// Timings are the wall times of the three stages of Process, and of the
// wait for one of the Model's interpreters (other cameras were using them),
// which none of the three includes.
type Timings struct {
	Normalize, Invoke, Post, Wait time.Duration
}

// Model is one bundle in service: its interpreters, which the Pipelines
// made from it (one per camera) borrow a frame at a time. Safe for
// concurrent use.
type Model struct {
	bundle *models.Bundle
	meta   models.Meta
	all    []*runtime.Interpreter
	free   chan *runtime.Interpreter

	// Exactly one of these tables is set, matching the input tensor type.
	lutF32 *[3][256]float32
	lutI8  *[3][256]int8
	lutU8  *[3][256]uint8

	mu    sync.Mutex
	users int // open Pipelines, plus one until Model.Close
}

// Pipeline runs a Model for one camera. Not goroutine-safe.
type Pipeline struct {
	model     *Model
	last      *runtime.Interpreter // the interpreter the last Process used (tests read its input)
	meta      models.Meta
	w, h      int // model input size
	threshold float32
	sigma     float64
	rgb       bool

	resized gocv.Mat // frame at w x h, 8UC3 BGR
	raw     gocv.Mat // model output, dequantized, h x w 32F
	up      gocv.Mat // raw resized to w x h
	blurred gocv.Mat // up blurred: Result.Map
	rawF32  []float32
	mapF32  []float32
	map8    []byte
}

// New makes a pipeline for bundle b with an interpreter of its own: Load
// with one interpreter, for one camera.
func New(b *models.Bundle, opt runtime.Options) (*Pipeline, error) {
	m, err := Load(b, opt, 1)
	if err != nil {
		return nil, err
	}
	p := m.Pipeline()
	m.Close() // the interpreter goes with p
	return p, nil
}

// Load makes `interpreters` (at least 1) interpreters of bundle b for the
// cameras that will share it; they share the model's weights too
// (runtime.Model). It checks that the model's tensors match
// model.json (sizes, types, input quantization), because the lookup tables
// and the post-processing are built from model.json.
//
// A bundle with a full-width memory of normal patches (model.json's memory
// without "dims": exported before memories were projected) runs on XNNPACK
// when the GPU delegate is asked for, with one warning: its descriptors'
// 3x3 mean is an AVERAGE_POOL_2D, whose padding TFLite's GPU delegate gets
// wrong (on Mesa's rusticl its maps were 0.61 of their range off the
// CPU's), and a wrong map is a wrong verdict. Projected memories write
// that mean as a depthwise convolution (gnl/memory.py: mean3x3), which the
// GPU delegate reproduces (runtime.TestGPUParity).
func Load(b *models.Bundle, opt runtime.Options, interpreters int) (*Model, error) {
	if d, err := runtime.ParseDelegate(opt.Delegate); err == nil && d == runtime.GPU && b.Meta.Memory != nil && b.Meta.Memory.Dims == 0 {
		slog.Warn("delegate not applied, running on "+runtime.XNNPACK+" instead", "model", b.ModelPath, "delegate", d,
			"err", "the bundle has a full-width memory of normal patches, whose maps TFLite's GPU delegate does not reproduce; "+
				"gnld runs it on the CPU (XNNPACK); rebuild its memory with gnl fit --resume --memory-dims 48 to run it on the GPU")
		opt.Delegate = runtime.XNNPACK
	}
	loaded, err := runtime.LoadModel(b.ModelPath)
	if err != nil {
		return nil, err
	}
	defer loaded.Close() // the interpreters hold it
	ips, err := loaded.NewInterpreters(opt, interpreters)
	if err != nil {
		return nil, err
	}
	m := &Model{bundle: b, meta: b.Meta, all: ips, users: 1}
	for _, ip := range ips {
		if err := m.checkTensors(ip); err != nil {
			m.closeInterpreters()
			return nil, err
		}
	}
	m.free = make(chan *runtime.Interpreter, len(m.all))
	for _, ip := range m.all {
		m.free <- ip
	}
	switch in := m.all[0].Input().Info(); in.DType {
	case runtime.Float32:
		m.lutF32 = lookupTables[float32](m.meta.Input)
	case runtime.Int8:
		m.lutI8 = lookupTables[int8](m.meta.Input)
	case runtime.Uint8:
		m.lutU8 = lookupTables[uint8](m.meta.Input)
	}
	return m, nil
}

// Interpreters is how many interpreters `cameras` cameras on one Model
// share: the setting (GNLD_INTERPRETERS) when it is positive, else one per
// camera, up to one per `threads` cores, so that cameras are scored side
// by side as far as the cores allow, and further cameras cost a frame's
// buffers, not a copy of the model.
func Interpreters(setting, cameras, threads int) int {
	if setting > 0 {
		return setting
	}
	return max(1, min(cameras, goruntime.NumCPU()/max(threads, 1)))
}

// Interpreters is how many interpreters the Model's cameras share.
func (m *Model) Interpreters() int { return len(m.all) }

// Delegate says where the model runs ("xnnpack", "builtin", "gpu" or a
// plugin path).
func (m *Model) Delegate() string { return m.all[0].Delegate() }

// Placement says how many nodes each delegate took and the model's MACs.
func (m *Model) Placement() runtime.Placement { return m.all[0].Placement() }

// Close gives up the Model's own hold on its interpreters: they are freed
// now if no Pipeline uses them, else when the last one closes. Pipeline
// must not be called afterwards.
func (m *Model) Close() { m.release() }

func (m *Model) release() {
	m.mu.Lock()
	m.users--
	last := m.users == 0
	m.mu.Unlock()
	if last {
		m.closeInterpreters()
	}
}

func (m *Model) closeInterpreters() {
	for _, ip := range m.all {
		ip.Close()
	}
	m.all = nil
}

// Pipeline makes a camera's pipeline on m: its own buffers and threshold
// (the bundle's until SetThreshold), m's interpreters.
func (m *Model) Pipeline() *Pipeline {
	m.mu.Lock()
	if m.users == 0 {
		m.mu.Unlock()
		panic("pipeline: Model.Pipeline after the model was closed")
	}
	m.users++
	m.mu.Unlock()
	meta := m.meta
	p := &Pipeline{
		model: m, meta: meta, w: meta.Input.Width, h: meta.Input.Height,
		threshold: float32(meta.Threshold.Value), sigma: meta.Postprocess.BlurSigma,
		rgb: meta.Input.ChannelOrder == "RGB",
	}
	oh, ow := meta.Output.Height, meta.Output.Width
	p.resized = gocv.NewMatWithSize(p.h, p.w, gocv.MatTypeCV8UC3)
	p.raw = gocv.NewMatWithSize(oh, ow, gocv.MatTypeCV32F)
	p.up = gocv.NewMatWithSize(p.h, p.w, gocv.MatTypeCV32F)
	p.blurred = gocv.NewMatWithSize(p.h, p.w, gocv.MatTypeCV32F)
	p.map8 = make([]byte, p.w*p.h)
	// Views onto Mat memory; the Mats keep their size, so these stay valid.
	p.rawF32, _ = p.raw.DataPtrFloat32()
	p.mapF32, _ = p.blurred.DataPtrFloat32()
	return p
}

func (m *Model) checkTensors(ip *runtime.Interpreter) error {
	b := m.bundle
	in, out := ip.Input().Info(), ip.Output().Info()
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
	if t := teachLayout(b.Meta); t != nil {
		x := ip.Extra()
		want := []int{1, t.Height, t.Width, t.Dims}
		if x == nil || x.Info().DType != runtime.Float32 || !slices.Equal(x.Info().Shape, want) {
			var got any = "missing"
			if x != nil {
				got = fmt.Sprint(x.Info().DType, x.Info().Shape)
			}
			return fail("output 1 (memory descriptors)", got, fmt.Sprint("float32", want, " (memory.teach)"))
		}
	}
	return nil
}

func teachLayout(m models.Meta) *models.Teach {
	if m.Memory == nil {
		return nil
	}
	return m.Memory.Teach
}

// SetThreshold overrides the bundle's threshold (per-camera setting).
func (p *Pipeline) SetThreshold(t float32) { p.threshold = t }

// Threshold is the threshold Process compares scores with.
func (p *Pipeline) Threshold() float32 { return p.threshold }

// Meta is the bundle's metadata.
func (p *Pipeline) Meta() models.Meta { return p.meta }

// Delegate says where the model runs ("xnnpack", "builtin", "gpu" or a
// plugin path).
func (p *Pipeline) Delegate() string { return p.model.Delegate() }

// Placement says how many nodes each delegate took and the model's MACs.
func (p *Pipeline) Placement() runtime.Placement { return p.model.Placement() }

// ErrFrame is wrapped by errors about unusable frames (empty, wrong type):
// the camera's problem, not the model's.
var ErrFrame = errors.New("unusable frame")

// Process scores one 8-bit BGR frame of any size. The frame is only read.
func (p *Pipeline) Process(frame gocv.Mat) (Result, error) { return p.process(frame, nil) }

// Descriptors scores frame as Process does and also returns a copy of a
// teachable memory's descriptors of it (model.json memory.teach: Height x
// Width x Dims, row-major), for package teach. Not for the hot path.
func (p *Pipeline) Descriptors(frame gocv.Mat) (Result, []float32, error) {
	t := teachLayout(p.meta)
	if t == nil {
		return Result{}, nil, fmt.Errorf("%s: the model's memory is not teachable (no memory.teach in %s); "+
			"upgrade the bundle with `gnl teachable BUNDLE`", p.model.bundle.Dir, models.MetaFile)
	}
	d := make([]float32, t.Height*t.Width*t.Dims)
	res, err := p.process(frame, d)
	return res, d, err
}

// process is Process; a non-nil extra receives a copy of output 1.
func (p *Pipeline) process(frame gocv.Mat, extra []float32) (Result, error) {
	t0 := time.Now()
	px, err := p.resize(frame)
	if err != nil {
		return Result{}, err
	}
	t1 := time.Now()
	ip := <-p.model.free
	t2 := time.Now()
	p.last = ip
	p.fill(ip.Input(), px)
	t3 := time.Now()
	if err := ip.Invoke(); err != nil {
		p.model.free <- ip
		return Result{}, err
	}
	t4 := time.Now()
	p.readOutput(ip.Output())
	if extra != nil {
		copy(extra, ip.Extra().Float32s())
	}
	p.model.free <- ip
	score := p.postRaw()
	t5 := time.Now()
	return Result{
		Score: score, Threshold: p.threshold, Anomalous: score >= p.threshold,
		Map: p.mapF32, MapW: p.w, MapH: p.h,
		Timings: Timings{Normalize: t1.Sub(t0) + t3.Sub(t2), Invoke: t4.Sub(t3), Post: t5.Sub(t4), Wait: t2.Sub(t1)},
	}, nil
}

// resize checks frame and returns its pixels at the input size
// (INTER_LINEAR): the frame's own when it has that size already.
func (p *Pipeline) resize(frame gocv.Mat) ([]byte, error) {
	if frame.Empty() {
		return nil, fmt.Errorf("pipeline: %w: empty frame (the camera returned no image?)", ErrFrame)
	}
	if t := frame.Type(); t != gocv.MatTypeCV8UC3 {
		return nil, fmt.Errorf("pipeline: %w: frame type %v with %d channels, want 8-bit BGR (CV_8UC3); convert grey or BGRA frames with cvtColor first",
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
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	return px, nil
}

// fill writes pixels px through the lookup tables into the input tensor.
func (p *Pipeline) fill(in *runtime.Tensor, px []byte) {
	m := p.model
	switch {
	case m.lutF32 != nil:
		fill(in.Float32s(), px, m.lutF32, p.rgb)
	case m.lutI8 != nil:
		fill(in.Int8s(), px, m.lutI8, p.rgb)
	default:
		fill(in.Uint8s(), px, m.lutU8, p.rgb)
	}
}

// readOutput dequantizes the output tensor into raw.
func (p *Pipeline) readOutput(out *runtime.Tensor) {
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

// Close frees the Mats, and the Model's interpreters if this was their
// last user. Results' maps become invalid. Close is idempotent.
func (p *Pipeline) Close() {
	if p.model == nil {
		return
	}
	p.model.release()
	p.model, p.last = nil, nil
	for _, m := range []*gocv.Mat{&p.resized, &p.raw, &p.up, &p.blurred} {
		m.Close()
	}
	p.rawF32, p.mapF32 = nil, nil
}
