package models

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DriftFile is the optional file of training-image statistics in a bundle,
// written by `gnl drift-stats` (gnl/drift.py). Without it gnld runs with
// its drift monitor off.
const DriftFile = "drift.json"

// DriftFormatVersion is the drift.json format this gnld reads.
const DriftFormatVersion = 1

// DriftImageFeatures are the per-image features every drift.json has, in
// the order gnld's drift monitor reports them. DriftScore ("score", the
// held-back normal images' anomaly scores) is optional.
var DriftImageFeatures = []string{
	"brightness", "contrast", "black_level", "sharpness", "colour_rg", "colour_bg", "orientation", "layout",
}

// DriftScore is the feature-level entry of drift.json.
const DriftScore = "score"

// MaxDriftPresize bounds presize (gnl drift-stats writes 256): gnld's
// drift monitor resizes every sampled frame to presize x presize, and a
// damaged drift.json asking for 100000 x 100000 made OpenCV fail to
// allocate 30 GB and abort the process (FuzzDriftJSON). It also bounds
// analysis_size and thumb_size, which are at most presize.
const MaxDriftPresize = 4096

const driftFix = "regenerate it with `gnl drift-stats --data DATA --bundle BUNDLE`, or delete it to run without the drift monitor"

// Drift mirrors drift.json (BUNDLE.md): how the training images look.
type Drift struct {
	FormatVersion   int     `json:"format_version"`
	Presize         int     `json:"presize"`
	AnalysisSize    int     `json:"analysis_size"`
	ThumbSize       int     `json:"thumb_size"`
	OrientationBins int     `json:"orientation_bins"`
	BlackPercentile float64 `json:"black_percentile"`
	Images          int     `json:"images"`
	// DriftPolicy is the bundle's drift policy (gnl/policy.py) when the
	// statistics include its views of the training images; "" for
	// drift.json written before policies (the same as "legacy").
	DriftPolicy string `json:"drift_policy"`
	// PolicyViews counts the policy's views of the training images that the
	// statistics (and Thumbnails, after the images') also hold.
	PolicyViews     int                     `json:"policy_views"`
	Features        map[string]DriftFeature `json:"features"`
	OrientationMean []float64               `json:"orientation_mean"`
	// Thumbnails are the training images' ThumbSize x ThumbSize grey
	// thumbnails, hex-coded, row-major.
	Thumbnails []string `json:"thumbnails"`
}

// DriftFeature is one feature's training distribution. gnld measures a
// live value v as z = (v - Median) / Scale.
type DriftFeature struct {
	TwoSided  bool               `json:"two_sided"` // false: only values above Median are drift
	Median    float64            `json:"median"`
	Scale     float64            `json:"scale"`
	Mean      float64            `json:"mean"`
	Std       float64            `json:"std"`
	Quantiles map[string]float64 `json:"quantiles"`
	Count     int                `json:"count"`
	Source    string             `json:"source,omitempty"`
}

// Thumbs decodes Thumbnails.
func (d *Drift) Thumbs() ([][]byte, error) {
	out := make([][]byte, len(d.Thumbnails))
	for i, h := range d.Thumbnails {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != d.ThumbSize*d.ThumbSize {
			return nil, fmt.Errorf("thumbnails[%d]: want %d hex-coded bytes", i, d.ThumbSize*d.ThumbSize)
		}
		out[i] = b
	}
	return out, nil
}

// loadDrift reads dir/drift.json; (nil, nil) when there is none. With a
// verifier, a drift.json that was signed must be there and unchanged.
func loadDrift(dir string, v *verifier) (*Drift, error) {
	path := filepath.Join(dir, DriftFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, signed := v.signed(DriftFile); signed {
			return nil, fmt.Errorf("%s: signed but missing (removed after signing); %s", path, signFix)
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := v.check(DriftFile, sum256(data)); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	var d Drift
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: not valid drift statistics (%v); %s", path, err, driftFix)
	}
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w; %s", path, err, driftFix)
	}
	return &d, nil
}

func (d *Drift) validate() error {
	switch {
	case d.FormatVersion != DriftFormatVersion:
		return fmt.Errorf("format_version is %d, want %d", d.FormatVersion, DriftFormatVersion)
	case d.AnalysisSize < 8 || d.ThumbSize < 2 || d.ThumbSize > d.AnalysisSize || d.Presize < d.AnalysisSize || d.Presize > MaxDriftPresize:
		return fmt.Errorf("presize %d / analysis_size %d / thumb_size %d: want analysis_size up to %d / 8 or more / 2 up to analysis_size",
			d.Presize, d.AnalysisSize, d.ThumbSize, MaxDriftPresize)
	case d.OrientationBins < 2 || len(d.OrientationMean) != d.OrientationBins:
		return fmt.Errorf("orientation_mean has %d values for %d bins", len(d.OrientationMean), d.OrientationBins)
	case !(d.BlackPercentile > 0 && d.BlackPercentile < 1):
		return fmt.Errorf("black_percentile is %v, want between 0 and 1", d.BlackPercentile)
	case len(d.Thumbnails) == 0:
		return errors.New("no thumbnails")
	}
	if _, err := d.Thumbs(); err != nil {
		return err
	}
	for _, name := range append(DriftImageFeatures, DriftScore) {
		f, ok := d.Features[name]
		if !ok && name == DriftScore {
			continue
		}
		if !ok {
			return fmt.Errorf("features.%s missing", name)
		}
		if !(f.Scale > 0) {
			return fmt.Errorf("features.%s.scale is %v, want a positive number", name, f.Scale)
		}
	}
	return nil
}
