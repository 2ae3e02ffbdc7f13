// Package calibration holds the per-camera thresholds that `gnlctl
// calibrate` derives on the device from a line's own known-good images,
// and the rules that turn good-image scores into a threshold (the Go
// side of models/gnl/threshold.py).
//
// Lifecycle: gnlctl scores the images with gnld's pipeline, takes the
// bundle's rule (RuleOf), calls New and Write; gnld calls Read for each
// camera at start-up and on every reload (SIGHUP). A record is one JSON file per camera in a folder
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

	"gnld/models"
)

// The rules, as model.json's threshold.rule names them.
const (
	// RuleGumbel: fit a Gumbel distribution to the normal scores by
	// moments and take its 1 - target quantile (gnl/threshold.py).
	RuleGumbel = "gumbel"
	// RuleQuantile: the empirical quantile of the normal scores, as bundles
	// made before rules were named did (threshold.normal_quantile).
	RuleQuantile = "quantile"
)

// DefaultFalseAlarmTarget is gnl/threshold.py's FALSE_ALARM_TARGET, for
// bundles that name the Gumbel rule without a target.
const DefaultFalseAlarmTarget = 0.01

// eulerGamma is the Euler-Mascheroni constant, the Gumbel's mean offset.
const eulerGamma = 0.5772156649015329

// MinImages is the fewest good images calibrate accepts.
const MinImages = 10

// AllCameras is the file name stem of a record for every camera.
const AllCameras = "_all"

// Rule is a normal-only threshold rule: Name, and its parameter.
type Rule struct {
	Name     string  // RuleGumbel or RuleQuantile
	Target   float64 // RuleGumbel: the false-alarm rate aimed at
	Quantile float64 // RuleQuantile: q
}

// RuleOf is the rule a bundle's own threshold was made with, so that a
// calibration replaces it like for like: threshold.rule "gumbel" with its
// false_alarm_target; no rule but a normal_quantile: the empirical
// quantile (older bundles); neither: the toolchain's current rule.
func RuleOf(t models.Threshold) (Rule, error) {
	switch {
	case t.Rule == RuleGumbel || (t.Rule == "" && t.NormalQuantile == nil):
		r := Rule{Name: RuleGumbel, Target: DefaultFalseAlarmTarget}
		if t.FalseAlarmTarget != nil {
			r.Target = *t.FalseAlarmTarget
		}
		if !(r.Target > 0 && r.Target < 1) {
			return Rule{}, fmt.Errorf("model.json threshold.false_alarm_target %v: want a rate between 0 and 1", r.Target)
		}
		return r, nil
	case t.Rule == "":
		if q := *t.NormalQuantile; !(q > 0 && q <= 1) {
			return Rule{}, fmt.Errorf("model.json threshold.normal_quantile %v: want a number in (0, 1]", q)
		}
		return Rule{Name: RuleQuantile, Quantile: *t.NormalQuantile}, nil
	}
	return Rule{}, fmt.Errorf("model.json threshold.rule %q: this gnlctl knows %q (and the older normal_quantile); use a gnlctl as new as the bundle", t.Rule, RuleGumbel)
}

// Threshold applies the rule to the scores of normal images.
func (r Rule) Threshold(scores []float64) float64 {
	if r.Name == RuleQuantile {
		return Quantile(scores, r.Quantile)
	}
	return Gumbel(scores, r.Target)
}

// String describes the rule, as records and gnlctl print it.
func (r Rule) String() string {
	if r.Name == RuleQuantile {
		return fmt.Sprintf("quantile: the %g quantile of the good-image scores, interpolated linearly (numpy.quantile), as bundles before gnl/threshold.py", r.Quantile)
	}
	return fmt.Sprintf("gumbel: Gumbel fitted to the good-image scores by moments, its %g quantile (false-alarm target %g), as gnl/threshold.py", 1-r.Target, r.Target)
}

// Gumbel is gnl/threshold.py's gumbel_threshold: a Gumbel distribution
// fitted to the scores by the method of moments (beta = sd sqrt(6)/pi
// with the sample sd, ddof 1; mu = mean - gamma beta), and its 1 - target
// quantile, mu - beta ln(-ln(1 - target)). Keep the two equal; a test
// checks Go against the Python function.
func Gumbel(scores []float64, target float64) float64 {
	n := float64(len(scores))
	if len(scores) < 2 {
		return math.NaN()
	}
	var sum float64
	for _, s := range scores {
		sum += s
	}
	mean := sum / n
	var ss float64
	for _, s := range scores {
		ss += (s - mean) * (s - mean)
	}
	beta := math.Sqrt(ss/(n-1)) * math.Sqrt(6) / math.Pi
	mu := mean - eulerGamma*beta
	return mu - beta*math.Log(-math.Log(1-target))
}

// Quantile is numpy.quantile's default: the q quantile interpolated
// linearly between the two nearest order statistics (method "linear",
// Hyndman and Fan type 7).
func Quantile(scores []float64, q float64) float64 {
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
	Camera    string  `json:"camera"` // "" for every camera (_all.json)
	Threshold float64 `json:"threshold"`
	// The rule, named as model.json names it, with its parameter.
	Rule             string    `json:"rule"`
	FalseAlarmTarget float64   `json:"false_alarm_target,omitempty"`
	Quantile         float64   `json:"quantile,omitempty"`
	RuleDescription  string    `json:"rule_description"`
	Source           string    `json:"source"` // the folder of good images
	Images           int       `json:"images"`
	Date             time.Time `json:"date"`
	Model            Model     `json:"model"`
	// Scores describes the good-image scores, as model.json's threshold
	// does the held-back ones.
	Scores struct {
		Min    float64 `json:"min"`
		Median float64 `json:"median"`
		Mean   float64 `json:"mean"`
		Std    float64 `json:"std"` // sample standard deviation (ddof 1)
		Max    float64 `json:"max"`
		Q995   float64 `json:"q995"`
	} `json:"scores"`
	BundleThreshold float64 `json:"bundle_threshold"` // model.json threshold.value, for comparison
	// PolicyMargin was added to the rule's threshold: how far the bundle's
	// drift policy raised its own threshold above the clean-only one
	// (models.Threshold.PolicyMargin), so that drift the model was trained
	// to take as normal stays below the line's threshold too. 0: none.
	PolicyMargin float64 `json:"policy_margin,omitempty"`
}

// New makes the record for the scores of the good images in source,
// scored by model, with rule.
func New(camera, source string, scores []float64, rule Rule, model Model, bundleThreshold float64) (Record, error) {
	if len(scores) < MinImages {
		return Record{}, fmt.Errorf("%d good images in %s; calibration needs at least %d (a few hundred is better: the threshold sits in the tail of their scores)",
			len(scores), source, MinImages)
	}
	r := Record{
		Camera: camera, Threshold: rule.Threshold(scores), Rule: rule.Name, RuleDescription: rule.String(),
		Source: source, Images: len(scores), Date: time.Now().UTC().Truncate(time.Second),
		Model: model, BundleThreshold: bundleThreshold,
	}
	if rule.Name == RuleQuantile {
		r.Quantile = rule.Quantile
	} else {
		r.FalseAlarmTarget = rule.Target
	}
	sc := &r.Scores
	sc.Min, sc.Median, sc.Max, sc.Q995 = slices.Min(scores), Quantile(scores, 0.5), slices.Max(scores), Quantile(scores, 0.995)
	for _, s := range scores {
		sc.Mean += s / float64(len(scores))
	}
	for _, s := range scores {
		sc.Std += (s - sc.Mean) * (s - sc.Mean) / float64(len(scores)-1)
	}
	sc.Std = math.Sqrt(sc.Std)
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
