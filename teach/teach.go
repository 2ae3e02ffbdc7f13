// Package teach makes frames that a person judged normal (false alarms
// marked on gnld's page) normal to a bundle's memory of normal patches,
// on the device, without a training run: the frame's own patch
// descriptors are written into the memory's bank, in place of the bank's
// most redundant descriptors, as a new bundle version beside the old one.
//
// Where the bank lies and how a frame's descriptors are read is the
// bundle's memory.teach (BUNDLE.md, "Teaching"; gnl/teachable.py): the
// model's output 1 is the descriptors the memory compares, [h, w, dims]
// at the memory's stride; each chunk of the bank is a 1x1 convolution
// whose filter rows are twice a descriptor and whose bias is minus its
// squared length, float32 at byte offsets model.json names.
//
// What is taught, per frame, as little as makes it normal:
//   - its descriptors, farthest from the bank first (each next one the
//     farthest from the bank and from those picked already), until every
//     descriptor lies within the bank's own spacing (the median distance
//     of a bank descriptor to its nearest other one) or the frame's cap;
//   - of these, the first 4, 8, 16, ... are written into the bank until
//     the frame scores below the target: the threshold less the spread of
//     the held-back normal images' scores (model.json threshold.normal_std;
//     5% of the threshold without it), so that the same part seen again is
//     not flagged by a hair. Each descriptor taught is a row of the bank
//     replaced, and every row replaced makes what it covered a little less
//     normal to the memory: fewer rows, fewer side effects;
//   - the rows replaced go most redundant first (nearest neighbour
//     closest: the neighbour still covers what they covered), never a row
//     taught before, never both of a pair.
//
// The rest of the map (the student's 1-cos and the segmentation head) is
// not changed: a frame flagged by them stays flagged, and Report says so
// (score before and after against the threshold). Undo is serving the
// previous version, which Teach never modifies.
//
// Lifecycle: Teach is a function; it loads the bundle for itself (its
// own interpreter, one thread), so it runs beside the cameras and takes
// seconds. The caller serves the new folder (gnld: cmd/gnld/teach.go).
package teach

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

// Frame is one frame to make normal, as it was scored (after ROI and
// rotation).
type Frame struct {
	ID     string // where it came from (the evidence record's id), recorded in model.json
	Camera string
	Mat    gocv.Mat
}

// Options tune Teach. Zero values take the defaults.
type Options struct {
	By  string    // who taught, recorded in model.json
	Now time.Time // default time.Now()
	// MaxRows caps the bank rows one frame may take; default a quarter of
	// the frame's descriptors.
	MaxRows int
	// Runtime runs the bundle; default XNNPACK on one thread.
	Runtime runtime.Options
	// Threshold the frames are judged against; default the bundle's (a
	// camera with its own threshold passes it).
	Threshold float64
}

// FrameReport is what teaching did for one frame.
type FrameReport struct {
	ID          string  `json:"id"`
	Rows        int     `json:"rows"` // bank rows its descriptors took
	ScoreBefore float64 `json:"score_before"`
	ScoreAfter  float64 `json:"score_after"`
	Threshold   float64 `json:"threshold"`
	// Normal says whether the frame now scores below the threshold.
	Normal bool `json:"normal"`
}

// Report is the outcome of Teach.
type Report struct {
	Dir     string        `json:"dir"`     // the new bundle's folder
	Version string        `json:"version"` // its version
	From    string        `json:"from"`    // the version taught
	Radius  float64       `json:"radius"`  // the bank's spacing the frames were covered to
	Target  float64       `json:"target"`  // the score each frame was taught to fall below
	Frames  []FrameReport `json:"frames"`
	Took    time.Duration `json:"took_ns"`
}

// ErrNotTeachable is wrapped by errors about bundles whose memory cannot
// be taught (no memory, or one from before memory.teach).
var ErrNotTeachable = errors.New("the bundle's memory is not teachable")

// ErrFull is wrapped when the bank has no row left to give.
var ErrFull = errors.New("the memory has no room left to teach")

// Teach writes into dst (which must not exist) a new version of the
// bundle src in which frames are normal to its memory, and reports it.
// src is not modified. A signature (signature.json) is not copied: the
// new model is not the one that was signed.
func Teach(src *models.Bundle, frames []Frame, dst string, opt Options) (Report, error) {
	t0 := time.Now()
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	meta := src.Meta
	if meta.Memory == nil {
		return Report{}, fmt.Errorf("%s: %w: the model has no memory of normal patches (model.json has no memory); "+
			"only models fit with gnl fit --memory (the default) can be taught", src.Dir, ErrNotTeachable)
	}
	if meta.Memory.Teach == nil {
		return Report{}, fmt.Errorf("%s: %w (model.json has no memory.teach); make it teachable with `gnl teachable %s`",
			src.Dir, ErrNotTeachable, src.Dir)
	}
	if len(frames) == 0 {
		return Report{}, errors.New("teach: no frames")
	}
	if _, err := os.Stat(dst); err == nil {
		return Report{}, fmt.Errorf("teach: %s exists already", dst)
	}
	layout := meta.Memory.Teach
	model, err := os.ReadFile(src.ModelPath)
	if err != nil {
		return Report{}, err
	}
	bank, err := readBank(model, layout)
	if err != nil {
		return Report{}, fmt.Errorf("%s: %w; re-export the bundle (`gnl teachable %s`)", src.ModelPath, err, src.Dir)
	}

	// Each frame's descriptors and score, through the bundle's own pipeline.
	pipe, err := pipeline.New(src, opt.Runtime)
	if err != nil {
		return Report{}, err
	}
	queries := make([][]float32, len(frames))
	before := make([]float64, len(frames))
	for i, f := range frames {
		res, d, err := pipe.Descriptors(f.Mat)
		if err != nil {
			pipe.Close()
			return Report{}, fmt.Errorf("teach: frame %s: %w", f.ID, err)
		}
		queries[i], before[i] = d, float64(res.Score)
	}
	threshold := float64(pipe.Threshold())
	if opt.Threshold > 0 {
		threshold = opt.Threshold
	}
	pipe.Close()
	margin := 0.05 * threshold
	if s := meta.Threshold.NormalStd; s != nil && *s > 0 && *s < threshold/2 {
		margin = *s
	}
	target := threshold - margin

	// Which rows may go, most redundant first, and the spacing to cover to.
	protected := map[int]bool{}
	for _, t := range layout.Taught {
		for _, r := range t.Rows {
			protected[r] = true
		}
	}
	order, radius := evictionOrder(bank, layout.Dims, protected)
	maxRows := opt.MaxRows
	if maxRows <= 0 {
		maxRows = max(layout.Height*layout.Width/4, 1)
	}
	report := Report{Dir: dst, From: meta.Version, Radius: radius, Target: target}
	scratch := dst + ".scratch"
	defer os.RemoveAll(scratch)
	var taught []models.Taught
	next := 0
	for i, f := range frames {
		add := cover(queries[i], bank, layout.Dims, radius, maxRows)
		// A frame already below the target (scored by the bank as it is
		// now: earlier frames of this teaching may have moved it) takes no row.
		now := before[i]
		if i > 0 && len(add) > 0 {
			if now, err = scoreWith(src, scratch, model, layout, bank, f.Mat, opt.Runtime); err != nil {
				return Report{}, err
			}
		}
		if now < target {
			add = nil
		}
		var rows []int
		for k := 0; k < len(add); {
			step := min(max(4, 2*k), len(add)) // 4, 8, 16, ... descriptors in all
			if step-k > len(order)-next {
				return Report{}, fmt.Errorf("teach: frame %s needs more bank rows than the %d left: %w; "+
					"export the marked frames (gnlctl evidence export) and train again with gnl fit", f.ID, len(order)-next, ErrFull)
			}
			for _, q := range add[k:step] {
				r := order[next]
				next++
				copy(bank[r*layout.Dims:(r+1)*layout.Dims], q)
				rows = append(rows, r)
			}
			k = step
			if k == len(add) {
				break // all it needs: the final scoring below says how far that got
			}
			s, err := scoreWith(src, scratch, model, layout, bank, f.Mat, opt.Runtime)
			if err != nil {
				return Report{}, err
			}
			if s < target {
				break
			}
		}
		slices.Sort(rows)
		taught = append(taught, models.Taught{Frame: f.ID, Camera: f.Camera, By: opt.By, At: opt.Now.UTC(),
			From: meta.Version, FromSHA256: meta.ModelSHA256, Rows: rows, ScoreBefore: before[i]})
		report.Frames = append(report.Frames, FrameReport{ID: f.ID, Rows: len(rows), ScoreBefore: before[i], Threshold: threshold})
	}

	// The new bundle: model.tflite with the bank rewritten, model.json naming it.
	writeBank(model, layout, bank)
	if err := writeBundle(src, dst, model, opt.Now, taught); err != nil {
		os.RemoveAll(dst)
		return Report{}, err
	}
	nb, err := models.Load(dst)
	if err != nil {
		os.RemoveAll(dst)
		return Report{}, fmt.Errorf("teach: the new bundle does not load: %w", err)
	}
	report.Version = nb.Meta.Version

	// Each frame scored again by the new model.
	if pipe, err = pipeline.New(nb, opt.Runtime); err != nil {
		os.RemoveAll(dst)
		return Report{}, fmt.Errorf("teach: the new bundle does not run: %w", err)
	}
	for i, f := range frames {
		res, err := pipe.Process(f.Mat)
		if err != nil {
			pipe.Close()
			os.RemoveAll(dst)
			return Report{}, err
		}
		taught[i].ScoreAfter = float64(res.Score)
		report.Frames[i].ScoreAfter = float64(res.Score)
		report.Frames[i].Normal = float64(res.Score) < threshold
	}
	pipe.Close()
	if err := writeScores(dst, taught); err != nil {
		os.RemoveAll(dst)
		return Report{}, err
	}
	report.Took = time.Since(t0)
	return report, nil
}

// scoreWith scores frame with the bundle src whose bank is bank, through
// a scratch copy of it in folder dir.
func scoreWith(src *models.Bundle, dir string, model []byte, t *models.Teach, bank []float32, frame gocv.Mat,
	opt runtime.Options) (float64, error) {
	writeBank(model, t, bank)
	os.RemoveAll(dir)
	if err := writeBundle(src, dir, model, time.Now(), nil); err != nil {
		return 0, err
	}
	b, err := models.Load(dir)
	if err != nil {
		return 0, err
	}
	p, err := pipeline.New(b, opt)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	res, err := p.Process(frame)
	return float64(res.Score), err
}

// readBank returns the bank's descriptors, row-major Rows x Dims over all
// chunks, from the model file's bytes (the filters hold twice each).
func readBank(model []byte, t *models.Teach) ([]float32, error) {
	var bank []float32
	for i, c := range t.Chunks {
		n := int64(c.Rows * t.Dims)
		if c.FilterOffset+4*n > int64(len(model)) || c.BiasOffset+4*int64(c.Rows) > int64(len(model)) {
			return nil, fmt.Errorf("memory.teach.chunks[%d] lies beyond the model file's %d bytes", i, len(model))
		}
		for k := range n {
			bank = append(bank, f32(model, c.FilterOffset+4*k)/2)
		}
		// The bias must be minus the squared length of each row: else the
		// offsets do not point at this bundle's bank.
		for r := range int64(c.Rows) {
			row := bank[len(bank)-int(n)+int(r)*t.Dims:][:t.Dims]
			if b := f32(model, c.BiasOffset+4*r); math.Abs(float64(b+norm2(row))) > 1e-3*math.Max(1, math.Abs(float64(b))) {
				return nil, fmt.Errorf("memory.teach.chunks[%d]: bias %d is %g, not minus its row's squared length %g", i, r, b, norm2(row))
			}
		}
	}
	return bank, nil
}

// writeBank writes bank back into the model file's bytes: filter 2b, bias -|b|^2.
func writeBank(model []byte, t *models.Teach, bank []float32) {
	row := 0
	for _, c := range t.Chunks {
		for r := range c.Rows {
			b := bank[(row+r)*t.Dims:][:t.Dims]
			for k, v := range b {
				putF32(model, c.FilterOffset+4*int64(r*t.Dims+k), 2*v)
			}
			putF32(model, c.BiasOffset+4*int64(r), -norm2(b))
		}
		row += c.Rows
	}
}

func f32(b []byte, off int64) float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(b[off:]))
}

func putF32(b []byte, off int64, v float32) {
	binary.LittleEndian.PutUint32(b[off:], math.Float32bits(v))
}

func norm2(x []float32) float32 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return float32(s)
}

func dist2(a, b []float32) float32 {
	var s float32
	for i, v := range a {
		d := v - b[i]
		s += d * d
	}
	return s
}

// evictionSample bounds the rows whose nearest neighbour is searched
// (over the whole bank): every k-th row, so that teaching takes seconds.
const evictionSample = 4096

// evictionOrder returns the bank rows that may be replaced, most
// redundant first (nearest neighbour closest), without protected rows and
// without a row whose nearest neighbour went before it; and the median
// nearest-neighbour distance, the bank's spacing.
func evictionOrder(bank []float32, dims int, protected map[int]bool) ([]int, float64) {
	n := len(bank) / dims
	step := max(n/evictionSample, 1)
	type cand struct {
		row, nn int
		d       float32
	}
	var cands []cand
	for r := 0; r < n; r += step {
		if protected[r] {
			continue
		}
		a := bank[r*dims:][:dims]
		best, bi := float32(math.Inf(1)), -1
		for o := range n {
			if o == r {
				continue
			}
			if d := dist2(a, bank[o*dims:][:dims]); d < best {
				best, bi = d, o
			}
		}
		cands = append(cands, cand{r, bi, best})
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].d < cands[j].d })
	radius := 0.0
	if len(cands) > 0 {
		radius = math.Sqrt(float64(cands[len(cands)/2].d))
	}
	gone := map[int]bool{}
	var order []int
	for _, c := range cands {
		if gone[c.nn] {
			continue // its neighbour is going: keep this one to cover for both
		}
		gone[c.row] = true
		order = append(order, c.row)
	}
	return order, radius
}

// cover picks descriptors of one frame (queries, h*w x dims) to add so
// that each of them lies within radius of the bank or of one added,
// farthest first, at most maxRows.
func cover(queries, bank []float32, dims int, radius float64, maxRows int) [][]float32 {
	nq, nb := len(queries)/dims, len(bank)/dims
	d := make([]float32, nq)
	for i := range nq {
		q := queries[i*dims:][:dims]
		best := float32(math.Inf(1))
		for o := range nb {
			best = min(best, dist2(q, bank[o*dims:][:dims]))
		}
		d[i] = best
	}
	r2 := float32(radius * radius)
	var add [][]float32
	for len(add) < maxRows {
		far := 0
		for i := range d {
			if d[i] > d[far] {
				far = i
			}
		}
		if d[far] <= r2 {
			break
		}
		q := append([]float32(nil), queries[far*dims:][:dims]...)
		add = append(add, q)
		for i := range d {
			d[i] = min(d[i], dist2(queries[i*dims:][:dims], q))
		}
	}
	return add
}

// writeBundle writes dst: src's files (but its signature), model.tflite
// from model, and model.json with the new hash, version and taught frames.
func writeBundle(src *models.Bundle, dst string, model []byte, now time.Time, taught []models.Taught) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(src.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || name == models.SignatureFile || name == models.MetaFile || name == src.Meta.ModelFile {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src.Dir, name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, name), data, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dst, src.Meta.ModelFile), model, 0o644); err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(src.Dir, models.MetaFile))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dst, models.MetaFile), raw, 0o644); err != nil {
		return err
	}
	h := sha256.Sum256(model)
	sum := hex.EncodeToString(h[:])
	version := fmt.Sprintf("%s-%s", now.UTC().Format("20060102"), sum[:8])
	return editMeta(dst, func(m map[string]any) {
		m["previous_version"] = m["version"]
		m["version"] = version
		m["model_sha256"] = sum
		// The recorded metrics were measured on the version taught, not on this one.
		if metrics, ok := m["metrics"].(map[string]any); ok {
			if on, ok := metrics["measured_on"].(map[string]any); ok {
				on["version"] = m["previous_version"]
			}
		}
		appendTaught(m, taught)
	})
}

// writeScores rewrites the frames of this teaching (the last len(taught)
// in dst's model.json) with their scores after.
func writeScores(dst string, taught []models.Taught) error {
	return editMeta(dst, func(m map[string]any) {
		tm := m["memory"].(map[string]any)["teach"].(map[string]any)
		all, _ := tm["taught"].([]any)
		tm["taught"] = all[:len(all)-len(taught)]
		appendTaught(m, taught)
	})
}

func appendTaught(m map[string]any, taught []models.Taught) {
	tm := m["memory"].(map[string]any)["teach"].(map[string]any)
	all, _ := tm["taught"].([]any)
	for _, t := range taught {
		all = append(all, t)
	}
	tm["taught"] = all
}

// editMeta applies edit to dir's model.json, keeping every field it does
// not touch (a map, not models.Meta: fields this gnld does not know stay).
func editMeta(dir string, edit func(map[string]any)) error {
	path := filepath.Join(dir, models.MetaFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	edit(m)
	out, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
