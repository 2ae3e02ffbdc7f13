package drift

import (
	"fmt"
	"image"
	"math"

	"gocv.io/x/gocv"

	"gnld/models"
)

// Feature indexes: the bundle's image features (models.DriftImageFeatures,
// same order) and then the model's score.
const (
	Brightness = iota
	Contrast
	BlackLevel
	Sharpness
	ColourRG
	ColourBG
	Orientation
	Layout
	Score
	numFeatures
)

// names are the features' names in drift.json, by index.
var names = append(append([]string(nil), models.DriftImageFeatures...), models.DriftScore)

// Features are one frame's values, by feature index. Score is filled by
// the Monitor, not by the Extractor.
type Features [numFeatures]float64

// Extractor computes a frame's image features exactly as gnl/drift.py
// raw_features and features do (the same OpenCV calls, on a copy resized
// to the bundle's presize, then to its analysis size). It reuses its Mats: not goroutine-safe;
// Close frees them.
type Extractor struct {
	ref        *models.Drift
	thumbs     [][]float64 // training thumbnails, normalised
	pre, size  image.Point
	presized   gocv.Mat
	small      gocv.Mat
	grey       gocv.Mat
	lap        gocv.Mat
	gx, gy     gocv.Mat
	mag, ang   gocv.Mat
	thumb      gocv.Mat
	mean, std  gocv.Mat
	hist       []float64
	greyCounts [256]int
	norm       []float64
}

// NewExtractor prepares an extractor for the bundle's statistics.
func NewExtractor(ref *models.Drift) (*Extractor, error) {
	raw, err := ref.Thumbs()
	if err != nil {
		return nil, err
	}
	e := &Extractor{
		ref: ref, pre: image.Pt(ref.Presize, ref.Presize), size: image.Pt(ref.AnalysisSize, ref.AnalysisSize),
		presized: gocv.NewMat(), small: gocv.NewMat(), grey: gocv.NewMat(), lap: gocv.NewMat(), gx: gocv.NewMat(), gy: gocv.NewMat(),
		mag: gocv.NewMat(), ang: gocv.NewMat(), thumb: gocv.NewMat(), mean: gocv.NewMat(), std: gocv.NewMat(),
		hist: make([]float64, ref.OrientationBins), norm: make([]float64, ref.ThumbSize*ref.ThumbSize),
	}
	for _, t := range raw {
		n := make([]float64, len(t))
		normalise(t, n)
		e.thumbs = append(e.thumbs, n)
	}
	return e, nil
}

// Close frees the Mats.
func (e *Extractor) Close() {
	for _, m := range []*gocv.Mat{&e.presized, &e.small, &e.grey, &e.lap, &e.gx, &e.gy, &e.mag, &e.ang, &e.thumb, &e.mean, &e.std} {
		m.Close()
	}
}

// Features measures an 8-bit BGR frame. The frame is only read.
func (e *Extractor) Features(frame gocv.Mat) (Features, error) {
	var f Features
	if frame.Empty() || frame.Type() != gocv.MatTypeCV8UC3 {
		return f, fmt.Errorf("drift: want a non-empty 8-bit BGR frame, got type %v", frame.Type())
	}
	// Two steps, as gnl/drift.py: cheap at any resolution (INTER_AREA
	// straight from 1920x1080 takes 10-50 ms; by a whole factor it is fast).
	gocv.Resize(frame, &e.presized, e.pre, 0, 0, gocv.InterpolationLinear)
	gocv.Resize(e.presized, &e.small, e.size, 0, 0, gocv.InterpolationArea)
	gocv.CvtColor(e.small, &e.grey, gocv.ColorBGRToGray)

	m, s := e.meanStd(e.grey)
	f[Brightness], f[Contrast] = m/255, s/255

	px, err := e.grey.DataPtrUint8()
	if err != nil {
		return f, fmt.Errorf("drift: %w", err)
	}
	f[BlackLevel] = float64(e.percentile(px, e.ref.BlackPercentile)) / 255

	gocv.Laplacian(e.grey, &e.lap, gocv.MatTypeCV64F, 1, 1, 0, gocv.BorderDefault)
	_, ls := e.meanStd(e.lap)
	f[Sharpness] = math.Log10(1 + ls*ls)

	c := e.small.Mean() // B, G, R
	f[ColourRG], f[ColourBG] = (c.Val3-c.Val2)/255, (c.Val1-c.Val2)/255

	f[Orientation] = e.orientation()

	gocv.Resize(e.grey, &e.thumb, image.Pt(e.ref.ThumbSize, e.ref.ThumbSize), 0, 0, gocv.InterpolationArea)
	tp, err := e.thumb.DataPtrUint8()
	if err != nil {
		return f, fmt.Errorf("drift: %w", err)
	}
	normalise(tp, e.norm)
	f[Layout] = e.nearest(e.norm)
	return f, nil
}

func (e *Extractor) meanStd(m gocv.Mat) (mean, std float64) {
	gocv.MeanStdDev(m, &e.mean, &e.std)
	return e.mean.GetDoubleAt(0, 0), e.std.GetDoubleAt(0, 0)
}

// percentile is the first grey level whose cumulative count reaches p of
// the pixels (numpy: searchsorted(cumsum(bincount), p*n)).
func (e *Extractor) percentile(px []byte, p float64) int {
	e.greyCounts = [256]int{}
	for _, v := range px {
		e.greyCounts[v]++
	}
	target, cum := p*float64(len(px)), 0
	for v, n := range e.greyCounts {
		cum += n
		if float64(cum) >= target {
			return v
		}
	}
	return 255
}

// orientation is half the L1 distance between the frame's gradient
// orientation histogram and the training images' mean one.
func (e *Extractor) orientation() float64 {
	gocv.Sobel(e.grey, &e.gx, gocv.MatTypeCV32F, 1, 0, 3, 1, 0, gocv.BorderDefault)
	gocv.Sobel(e.grey, &e.gy, gocv.MatTypeCV32F, 0, 1, 3, 1, 0, gocv.BorderDefault)
	gocv.CartToPolar(e.gx, e.gy, &e.mag, &e.ang, true)
	mag, _ := e.mag.DataPtrFloat32()
	ang, _ := e.ang.DataPtrFloat32()
	bins := len(e.hist)
	width := 180.0 / float64(bins)
	clear(e.hist)
	total := 0.0
	for i, a32 := range ang {
		a := float64(a32)
		if a >= 180 {
			a -= 180
		}
		b := min(int(a/width), bins-1)
		w := float64(mag[i])
		e.hist[b] += w
		total += w
	}
	d := 0.0
	for b, h := range e.hist {
		if total > 0 {
			h /= total
		} else {
			h = 1 / float64(bins)
		}
		d += math.Abs(h - e.ref.OrientationMean[b])
	}
	return d / 2
}

// nearest is the RMS distance from t to the nearest training thumbnail.
func (e *Extractor) nearest(t []float64) float64 {
	best := math.Inf(1)
	for _, r := range e.thumbs {
		d := 0.0
		for i, v := range r {
			x := t[i] - v
			d += x * x
			if d >= best {
				break
			}
		}
		best = min(best, d)
	}
	return math.Sqrt(best / float64(len(t)))
}

// normalise writes t scaled to zero mean and unit deviation (at least one
// grey level) into dst, as gnl/drift.py normalise.
func normalise(t []byte, dst []float64) {
	n := float64(len(t))
	mean := 0.0
	for _, v := range t {
		mean += float64(v)
	}
	mean /= n
	variance := 0.0
	for _, v := range t {
		d := float64(v) - mean
		variance += d * d
	}
	sd := max(math.Sqrt(variance/n), 1)
	for i, v := range t {
		dst[i] = (float64(v) - mean) / sd
	}
}
