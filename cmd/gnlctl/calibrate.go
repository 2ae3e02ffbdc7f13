package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gnld/calibration"
	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

// defaultCalibrationDir is gnld's GNLD_CALIBRATION_DIR default.
const defaultCalibrationDir = "/var/lib/gnld/calibration"

// calibrate scores known-good images from the line with gnld's pipeline
// and writes the threshold that the rule of the bundle's own threshold
// gives (calibration.RuleOf: the Gumbel rule of gnl/threshold.py, or the
// empirical quantile of older bundles) as a camera's calibration record,
// which gnld reads at start-up and on reload.
func calibrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("calibrate", stderr)
	model := fs.String("model", "", "bundle folder (required): the bundle gnld serves")
	good := fs.String("good", "", "folder of known-good images from the line (required); more images may follow as arguments")
	camera := fs.String("camera", "", "camera name as in GNLD_CAMERAS (default: every camera without a calibration of its own)")
	dirDefault := defaultCalibrationDir
	if v := os.Getenv("GNLD_CALIBRATION_DIR"); v != "" {
		dirDefault = v
	}
	dir := fs.String("dir", dirDefault, "calibration folder, gnld's GNLD_CALIBRATION_DIR")
	threads := fs.Int("threads", 1, "TFLite CPU threads")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || *good == "" {
		return usageError{"calibrate needs --model BUNDLE and --good DIR"}
	}
	if _, err := calibration.Path(*dir, *camera); err != nil {
		return usageError{err.Error()}
	}
	images, err := expandImages(append([]string{*good}, pos...))
	if err != nil {
		return err
	}
	b, err := models.Load(*model)
	if err != nil {
		return err
	}
	rule, err := calibration.RuleOf(b.Meta.Threshold) // the rule of the bundle's own threshold
	if err != nil {
		return fmt.Errorf("%s: %w", b.Dir, err)
	}
	p, err := pipeline.New(b, runtime.Options{Threads: *threads})
	if err != nil {
		return err
	}
	defer p.Close()
	scores := make([]float64, 0, len(images))
	for _, path := range images {
		if err := ctx.Err(); err != nil {
			return err
		}
		s, err := scoreImage(p, path)
		if err != nil {
			return err // nothing written: a record is all the images or none
		}
		scores = append(scores, s)
	}
	m := b.Meta
	source, _ := filepath.Abs(*good)
	rec, err := calibration.New(*camera, source, scores, rule,
		calibration.Model{Name: m.Name, Version: m.Version, SHA256: m.ModelSHA256}, m.Threshold.Value)
	if err != nil {
		return err
	}
	// The line's good parts set the level; the drift policy's margin, measured
	// when the bundle was made, stays on top (models.Threshold.PolicyMargin).
	if margin := m.Threshold.PolicyMargin(); margin > 0 {
		rec.Threshold += margin
		rec.PolicyMargin = margin
		rec.RuleDescription += fmt.Sprintf(", plus the drift policy's margin %.4g (%s: the bundle's threshold over its clean-only one)",
			margin, m.Threshold.Policy)
	}
	path, err := calibration.Write(*dir, rec)
	if err != nil {
		return err
	}
	who := "camera " + *camera
	if *camera == "" {
		who = "every camera without its own calibration"
	}
	fmt.Fprintf(stdout, "calibrated %s with %s %s on %d good images from %s\n", who, m.Name, m.Version, rec.Images, source)
	fmt.Fprintf(stdout, "rule       %s\n", rec.RuleDescription)
	fmt.Fprintf(stdout, "scores     min %.4f  median %.4f  mean %.4f  sd %.4f  max %.4f\n",
		rec.Scores.Min, rec.Scores.Median, rec.Scores.Mean, rec.Scores.Std, rec.Scores.Max)
	fmt.Fprintf(stdout, "threshold  %.6g (the bundle's: %.6g)\n", rec.Threshold, rec.BundleThreshold)
	fmt.Fprintf(stdout, "wrote      %s; gnld uses it from its next reload (SIGHUP: systemctl reload gnld) or start\n", path)
	return nil
}

// scoreImage is one image's score through p.
func scoreImage(p *pipeline.Pipeline, path string) (float64, error) {
	frame, err := readImage(path)
	if err != nil {
		return 0, err
	}
	defer frame.Close()
	res, err := p.Process(frame)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return float64(res.Score), nil
}
