// Package models reads model bundles: a folder with model.tflite and
// model.json, written by `gnl export` (see BUNDLE.md in this folder, the
// contract between the Python toolchain and gnld).
//
// Load validates everything gnld relies on before any model runs, so a bad
// bundle fails at startup with an error that names the file, the key and the
// fix. A Bundle is read-only after Load and safe to share between goroutines.
package models

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// MetaFile is the metadata file's name inside a bundle.
const MetaFile = "model.json"

// FormatVersion is the bundle format this gnld reads.
const FormatVersion = 1

const fix = "re-export the bundle with `gnl export` (or `make model` for models/default)"

// Bundle is a validated bundle on disk.
type Bundle struct {
	Dir       string
	Meta      Meta
	ModelPath string // Dir joined with Meta.ModelFile
	// Drift is the training images' statistics (drift.json); nil when the
	// bundle has none, and gnld's drift monitor is then off.
	Drift *Drift
}

// Meta mirrors model.json (BUNDLE.md). Keys gnld does not use are kept in
// the file but not here.
type Meta struct {
	FormatVersion int         `json:"format_version"`
	Name          string      `json:"name"`
	Version       string      `json:"version"`
	ModelFile     string      `json:"model_file"`
	ModelSHA256   string      `json:"model_sha256"`
	Method        string      `json:"method"`
	Backbone      string      `json:"backbone"`
	Input         Input       `json:"input"`
	Output        Output      `json:"output"`
	Postprocess   Postprocess `json:"postprocess"`
	Threshold     Threshold   `json:"threshold"`
	Training      Training    `json:"training"`
	Quantization  string      `json:"quantization"`
	// Metrics are free-form evaluation results, e.g. {"int8": {"image_auroc": 0.98}}.
	Metrics map[string]map[string]any `json:"metrics"`
	// Memory is set when the map holds a memory of normal patches
	// (`gnl fit --memory`, BUNDLE.md); nil for bundles without one.
	Memory *Memory `json:"memory,omitempty"`
}

// Input says how a BGR frame becomes the input tensor (BUNDLE.md, steps 1-5).
type Input struct {
	Width        int          `json:"width"`
	Height       int          `json:"height"`
	Layout       string       `json:"layout"`
	ChannelOrder string       `json:"channel_order"`
	Resize       string       `json:"resize"`
	Mean         []float64    `json:"mean"`
	Std          []float64    `json:"std"`
	DType        string       `json:"dtype"`
	Quantization Quantization `json:"quantization"`
}

// Output describes the anomaly map tensor.
type Output struct {
	Name         string       `json:"name"`
	Width        int          `json:"width"`
	Height       int          `json:"height"`
	DType        string       `json:"dtype"`
	Quantization Quantization `json:"quantization"`
	Meaning      string       `json:"meaning"`
}

// Memory of normal patches inside the model: its size in descriptors, the
// principal axes they are projected onto (0: the full descriptor), the
// stride it compares at (0: 8), and the weight its distance map is added
// with.
type Memory struct {
	Size   int     `json:"size"`
	Dims   int     `json:"dims,omitempty"`
	Stride int     `json:"stride,omitempty"`
	Weight float64 `json:"weight"`
	// Teach says where gnld can teach the memory (package teach); nil for
	// bundles made before it (`gnl teachable BUNDLE` upgrades them).
	Teach *Teach `json:"teach,omitempty"`
}

// Teach is where a teachable memory lies (BUNDLE.md, "Teaching";
// gnl/teachable.py): the model's output that holds each frame's
// descriptors [1, Height, Width, Dims] (float32), and per chunk of the
// bank the byte offsets in the model file of its filter (Rows x Dims
// float32: twice each descriptor) and bias (Rows float32: minus each
// descriptor's squared length). Taught lists the frames taught so far.
type Teach struct {
	Output int          `json:"output"`
	Height int          `json:"height"`
	Width  int          `json:"width"`
	Dims   int          `json:"dims"`
	Chunks []TeachChunk `json:"chunks"`
	Taught []Taught     `json:"taught,omitempty"`
}

// TeachChunk is one 1x1 convolution of the bank.
type TeachChunk struct {
	FilterOffset int64 `json:"filter_offset"`
	BiasOffset   int64 `json:"bias_offset"`
	Rows         int   `json:"rows"`
}

// Taught is one frame made normal by teaching: where it came from, who
// taught it, the bank rows its descriptors replaced, and its score before
// and after (the same bundle's threshold).
type Taught struct {
	Frame       string    `json:"frame"`
	Camera      string    `json:"camera,omitempty"`
	By          string    `json:"by,omitempty"`
	At          time.Time `json:"at"`
	From        string    `json:"from"`        // the version taught
	FromSHA256  string    `json:"from_sha256"` // its model's SHA-256 (a calibration made with it still holds)
	Rows        []int     `json:"rows"`
	ScoreBefore float64   `json:"score_before"`
	ScoreAfter  float64   `json:"score_after"`
}

// Quantization of an integer tensor: real = (q - ZeroPoint) * Scale; Scale 0 for float.
type Quantization struct {
	Scale     float64 `json:"scale"`
	ZeroPoint int     `json:"zero_point"`
}

// Postprocess turns the raw map into the image score.
type Postprocess struct {
	Resize    string  `json:"resize"`
	BlurSigma float64 `json:"blur_sigma"`
	Score     string  `json:"score"`
}

// Threshold is the calibrated decision threshold; Value is the one used.
// Rule and FalseAlarmTarget say how it was derived from normal scores
// (gnl/threshold.py); bundles made before rules were named carry
// NormalQuantile (an empirical quantile) instead.
type Threshold struct {
	Value            float64  `json:"value"`
	Source           string   `json:"source"`
	Rule             string   `json:"rule"`
	FalseAlarmTarget *float64 `json:"false_alarm_target"`
	Normal           *float64 `json:"normal"`
	NormalQuantile   *float64 `json:"normal_quantile"`
	F1Optimal        *float64 `json:"f1_optimal"`
	// NormalStd is the spread of the held-back normal images' scores
	// (package teach keeps taught frames this far below the threshold).
	NormalStd *float64 `json:"normal_std"`
	// Clean is the same rule on the clean held-back images alone, when
	// Value also saw them in the drift policy's views (Policy); nil for
	// bundles from before drift policies and for the legacy policy.
	Clean  *float64 `json:"clean"`
	Policy string   `json:"policy"`
}

// PolicyMargin is how far the drift policy's views raised the threshold
// above the clean-only one (0 when there is none): gnlctl calibrate keeps
// it on top of a threshold from the line's own good parts.
func (t Threshold) PolicyMargin() float64 {
	if t.Clean == nil || t.Value <= *t.Clean {
		return 0
	}
	return t.Value - *t.Clean
}

// Training records what the model was trained on.
type Training struct {
	Data        string `json:"data"`
	Fingerprint string `json:"fingerprint"`
	Images      int    `json:"images"`
	Epochs      int    `json:"epochs"`
	Seed        int    `json:"seed"`
	ImageSize   int    `json:"image_size"`
}

// required are the keys gnld cannot run without, as dotted paths.
var required = []string{
	"format_version", "model_file", "model_sha256",
	"input.width", "input.height", "input.layout", "input.channel_order", "input.resize",
	"input.mean", "input.std", "input.dtype",
	"output.width", "output.height", "output.dtype",
	"postprocess.resize", "postprocess.blur_sigma", "postprocess.score",
	"threshold.value",
}

// Load reads and validates the bundle in dir, including the model file's
// SHA-256. It does not load the model into TFLite (runtime.New does).
func Load(dir string) (*Bundle, error) { return load(dir, nil) }

// load is Load; a non-nil v checks each file read against a verified
// signature (LoadSigned).
func load(dir string, v *verifier) (*Bundle, error) {
	metaPath := filepath.Join(dir, MetaFile)
	data, err := os.ReadFile(metaPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no bundle here (%w); point --model at a folder with model.json and model.tflite, or %s", metaPath, err, fix)
		}
		return nil, fmt.Errorf("%s: %w", metaPath, err)
	}
	if err := v.check(MetaFile, sum256(data)); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: not valid JSON (%v); %s", metaPath, err, fix)
	}
	for _, key := range required {
		if !has(raw, key) {
			return nil, fmt.Errorf("%s: missing %q; %s", metaPath, key, fix)
		}
	}
	b := &Bundle{Dir: dir}
	if err := json.Unmarshal(data, &b.Meta); err != nil {
		return nil, fmt.Errorf("%s: %v; %s", metaPath, err, fix)
	}
	if err := b.Meta.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w; %s", metaPath, err, fix)
	}
	b.ModelPath = filepath.Join(dir, b.Meta.ModelFile)
	if err := checkModel(b.ModelPath, b.Meta.ModelSHA256); err != nil {
		return nil, err
	}
	// model.json (checked above) holds the model's hash, which checkModel compared.
	if err := v.check(filepath.Base(b.Meta.ModelFile), strings.ToLower(b.Meta.ModelSHA256)); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if b.Drift, err = loadDrift(dir, v); err != nil {
		return nil, err
	}
	return b, nil
}

func sum256(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// has reports whether the dotted key path exists (and is not null) in m.
func has(m map[string]any, key string) bool {
	head, rest, nested := strings.Cut(key, ".")
	v, ok := m[head]
	if !ok || v == nil {
		return false
	}
	if !nested {
		return true
	}
	sub, ok := v.(map[string]any)
	return ok && has(sub, rest)
}

func (m *Meta) validate() error {
	bad := func(key string, v any, want string) error {
		return fmt.Errorf("%q is %v, want %s", key, v, want)
	}
	in, out := m.Input, m.Output
	switch {
	case m.FormatVersion != FormatVersion:
		return bad("format_version", m.FormatVersion, fmt.Sprint(FormatVersion, " (this gnld's bundle format)"))
	case m.ModelFile == "" || filepath.Base(m.ModelFile) != m.ModelFile:
		return bad("model_file", m.ModelFile, "a file name inside the bundle folder")
	case len(m.ModelSHA256) != 64:
		return bad("model_sha256", m.ModelSHA256, "64 hex digits")
	case in.Width <= 0 || in.Height <= 0:
		return bad("input.width/height", fmt.Sprint(in.Width, "x", in.Height), "positive sizes")
	case in.Layout != "NHWC":
		return bad("input.layout", in.Layout, `"NHWC"`)
	case in.ChannelOrder != "RGB" && in.ChannelOrder != "BGR":
		return bad("input.channel_order", in.ChannelOrder, `"RGB" or "BGR"`)
	case in.Resize != "linear":
		return bad("input.resize", in.Resize, `"linear"`)
	case len(in.Mean) != 3:
		return bad("input.mean", in.Mean, "3 numbers")
	case len(in.Std) != 3 || slices.Min(in.Std) <= 0:
		return bad("input.std", in.Std, "3 positive numbers")
	}
	if err := checkDType("input", in.DType, in.Quantization); err != nil {
		return err
	}
	if err := checkDType("output", out.DType, out.Quantization); err != nil {
		return err
	}
	switch p := m.Postprocess; {
	case out.Width <= 0 || out.Height <= 0:
		return bad("output.width/height", fmt.Sprint(out.Width, "x", out.Height), "positive sizes")
	case p.Resize != "linear":
		return bad("postprocess.resize", p.Resize, `"linear"`)
	case p.Score != "max":
		return bad("postprocess.score", p.Score, `"max"`)
	case !(p.BlurSigma > 0 && p.BlurSigma <= float64(max(in.Width, in.Height))):
		// OpenCV's kernel grows with sigma: 1e7 made it run out of memory,
		// 1e300 overflowed its size, and both aborted gnld (FuzzBundle).
		return bad("postprocess.blur_sigma", p.BlurSigma, fmt.Sprintf("a positive number up to the input's larger side, %d", max(in.Width, in.Height)))
	}
	if err := m.Memory.validate(); err != nil {
		return err
	}
	if !(m.Threshold.Value > 0) {
		// Scores are maxima of a non-negative map: a threshold of 0 or
		// less would call every frame anomalous.
		return bad("threshold.value", m.Threshold.Value, "a positive number (re-export the bundle, or run gnlctl calibrate)")
	}
	return nil
}

// validate checks a memory's teach layout against its size and dims; the
// offsets against the model file's size are checked by package teach,
// which reads them.
func (m *Memory) validate() error {
	if m == nil || m.Teach == nil {
		return nil
	}
	t, rows := m.Teach, 0
	if t.Output < 1 || t.Height <= 0 || t.Width <= 0 || t.Dims <= 0 || t.Dims != m.Dims {
		return fmt.Errorf(`"memory.teach" output %d, %dx%dx%d, want output >= 1 and dims %d (memory.dims)`,
			t.Output, t.Height, t.Width, t.Dims, m.Dims)
	}
	for i, c := range t.Chunks {
		if c.Rows <= 0 || c.FilterOffset <= 0 || c.BiasOffset <= 0 || c.FilterOffset%4 != 0 || c.BiasOffset%4 != 0 {
			return fmt.Errorf(`"memory.teach.chunks[%d]" is %+v, want positive rows and 4-byte aligned offsets`, i, c)
		}
		rows += c.Rows
	}
	if rows != m.Size {
		return fmt.Errorf(`"memory.teach.chunks" hold %d rows, want %d (memory.size)`, rows, m.Size)
	}
	return nil
}

func checkDType(tensor, dtype string, q Quantization) error {
	switch dtype {
	case "float32":
		return nil
	case "int8", "uint8":
		if q.Scale <= 0 {
			return fmt.Errorf("%q is %v for an %s tensor, want a positive scale", tensor+".quantization.scale", q.Scale, dtype)
		}
		return nil
	}
	return fmt.Errorf("%q is %q, want \"float32\", \"int8\" or \"uint8\"", tensor+".dtype", dtype)
}

// checkModel verifies that the model file exists and matches its hash.
func checkModel(path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w; %s", path, err, fix)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, want) {
		return fmt.Errorf("%s: SHA-256 is %s but model.json says %s (file changed, truncated or from another export); %s", path, got[:12], want[:min(12, len(want))], fix)
	}
	return nil
}
