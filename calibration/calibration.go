// Package calibration holds the per-camera thresholds that `gnlctl
// calibrate` derives on the device from a line's own known-good images,
// and the rule that turns good-image scores into a threshold.
//
// Lifecycle: gnlctl scores the images with gnld's pipeline, calls
// Threshold and Write; gnld calls Read for each camera at start-up and on
// every reload (SIGHUP). A record is one JSON file per camera in a folder
// (GNLD_CALIBRATION_DIR): <camera>.json, or _all.json for every camera
// without a file of its own. Write replaces a file atomically, so gnld
// never reads half a record.
//
// A record is only valid for the model it was made with: the scores of
// another model are on another scale. gnld applies a record only when its
// model SHA-256 is the bundle's (Applies) and otherwise keeps the bundle's
// threshold and says why.
package calibration

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

// DefaultQuantile is the normal quantile of the toolchain's rule
// (models/gnl/export.py NORMAL_QUANTILE), used when a bundle does not
// record its own (model.json threshold.normal_quantile).
const DefaultQuantile = 0.995

// MinImages is the fewest good images calibrate accepts.
const MinImages = 10

// AllCameras is the file name stem of a record for every camera.
const AllCameras = "_all"

// Rule names Threshold's rule with quantile q, as records and gnlctl
// print it.
func Rule(q float64) string {
	return fmt.Sprintf("normal-quantile: quantile %g of good-image scores, linear interpolation (numpy.quantile default), as gnl export", q)
}

// Threshold is the toolchain's normal-only rule (models/gnl/export.py,
// export_model: float(np.quantile(scores, NORMAL_QUANTILE))): the q
// quantile of the scores of normal images, interpolated linearly between
// the two nearest order statistics (numpy's default method "linear",
// Hyndman and Fan type 7). Keep it equal to the toolchain's rule; a test
// checks it against the default bundle's own threshold.
func Threshold(scores []float64, q float64) float64 {
	if len(scores) == 0 {
		return math.NaN()
	}
	s := slices.Clone(scores)
	slices.Sort(s)
	h := q * float64(len(s)-1)
	lo := int(math.Floor(h))
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[lo] + (h-float64(lo))*(s[lo+1]-s[lo])
}

// Model names the model a record was made with.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// Record is one camera's calibration, as written to <camera>.json.
type Record struct {
	Camera    string    `json:"camera"` // "" for every camera (_all.json)
	Threshold float64   `json:"threshold"`
	Rule      string    `json:"rule"`
	Quantile  float64   `json:"quantile"`
	Source    string    `json:"source"` // the folder of good images
	Images    int       `json:"images"`
	Date      time.Time `json:"date"`
	Model     Model     `json:"model"`
	// Scores summarises the good-image scores: min, median, max.
	Scores struct {
		Min    float64 `json:"min"`
		Median float64 `json:"median"`
		Max    float64 `json:"max"`
	} `json:"scores"`
	BundleThreshold float64 `json:"bundle_threshold"` // model.json threshold.value, for comparison
}

// New makes the record for scores of the images in source, scored by
// model, with the normal quantile q.
func New(camera, source string, scores []float64, q float64, model Model, bundleThreshold float64) (Record, error) {
	if len(scores) < MinImages {
		return Record{}, fmt.Errorf("%d good images in %s; calibration needs at least %d (a few hundred is better: the %g quantile of a few scores is nearly their maximum)",
			len(scores), source, MinImages, q)
	}
	r := Record{
		Camera: camera, Threshold: Threshold(scores, q), Rule: Rule(q), Quantile: q,
		Source: source, Images: len(scores), Date: time.Now().UTC().Truncate(time.Second),
		Model: model, BundleThreshold: bundleThreshold,
	}
	r.Scores.Min, r.Scores.Median, r.Scores.Max = slices.Min(scores), Threshold(scores, 0.5), slices.Max(scores)
	return r, nil
}

var cameraName = regexp.MustCompile(`^[a-z0-9][a-z0-9_]*$`)

// Path is the file of camera's record in dir; camera "" is every camera.
func Path(dir, camera string) (string, error) {
	if camera == "" {
		camera = AllCameras
	} else if !cameraName.MatchString(camera) {
		return "", fmt.Errorf("camera name %q: expected lower-case letters, digits and _ (as in GNLD_CAMERAS)", camera)
	}
	return filepath.Join(dir, camera+".json"), nil
}

// Write stores r in dir (created if missing), replacing the camera's
// record atomically, and returns the file's path.
func Write(dir string, r Record) (string, error) {
	path, err := Path(dir, r.Camera)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("calibration folder: %w", err)
	}
	b, _ := json.MarshalIndent(r, "", "  ") // plain struct: cannot fail
	tmp, err := os.CreateTemp(dir, ".calibration-*")
	if err != nil {
		return "", fmt.Errorf("calibration folder: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: nothing to remove
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return path, nil
}

// Read returns camera's record in dir: <camera>.json, else _all.json.
// It returns (nil, "", nil) when neither exists (or dir does not), and an
// error naming the file when one exists but cannot be used.
func Read(dir, camera string) (*Record, string, error) {
	for _, c := range []string{camera, ""} {
		path, err := Path(dir, c)
		if err != nil {
			return nil, "", err
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, path, fmt.Errorf("%s: %w", path, err)
		}
		var r Record
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, path, fmt.Errorf("%s: not a calibration record (%v); run gnlctl calibrate again", path, err)
		}
		if !(r.Threshold > 0) || math.IsInf(r.Threshold, 0) || len(r.Model.SHA256) != 64 {
			return nil, path, fmt.Errorf("%s: threshold %v or model sha256 %q unusable; run gnlctl calibrate again", path, r.Threshold, r.Model.SHA256)
		}
		return &r, path, nil
	}
	return nil, "", nil
}

// Applies reports whether r was made with the model whose SHA-256 is sha.
func (r *Record) Applies(sha string) bool {
	return r != nil && r.Model.SHA256 == sha
}
