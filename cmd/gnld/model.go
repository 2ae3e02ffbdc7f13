package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gocv.io/x/gocv"

	"gnld/calibration"
	"gnld/drift"
	"gnld/models"
	"gnld/pipeline"
	"gnld/publish"
	"gnld/runtime"
)

// Threshold sources, as results name them (threshold_source).
const (
	fromBundle      = "bundle"      // model.json threshold.value
	fromCalibration = "calibration" // gnlctl calibrate, made with this model
	fromConfig      = "config"      // GNLD_CAMERA_<NAME>_THRESHOLD
)

// scorer is one camera's model in service: its pipeline and what results
// say about it. The camera's worker is its only user once it serves.
type scorer struct {
	pipe            *pipeline.Pipeline
	model           publish.Model
	thresholdSource string
	// drift compares the frames with this bundle's training images
	// (page.go); nil when the bundle has no drift.json or the monitor is
	// off. A new model brings a new monitor, which starts measuring afresh.
	drift *drift.Monitor
}

func (s *scorer) close() {
	if s != nil {
		s.pipe.Close()
		if s.drift != nil {
			s.drift.Close()
		}
	}
}

// loadTimes are the stages of loading a model set, for the log.
type loadTimes struct{ load, build, warmup time.Duration }

// loadScorers loads the bundle in GNLD_MODEL_DIR and the calibration
// records, and makes and checks one scorer per camera: the metadata and
// model hash (models.Load), the tensors against the metadata
// (pipeline.Load, once: the cameras share its interpreters) and one
// warm-up frame each, which must give a finite score. On error nothing
// stays open.
func (d *daemon) loadScorers() (*models.Bundle, []*scorer, loadTimes, error) {
	var lt loadTimes
	t0 := time.Now()
	b, err := models.Load(d.cfg.ModelDir)
	if err != nil {
		return nil, nil, lt, fmt.Errorf("model bundle (GNLD_MODEL_DIR=%s): %w", d.cfg.ModelDir, err)
	}
	lt.load = time.Since(t0)
	d.logDrift(b)
	t1 := time.Now()
	shared, err := pipeline.Load(b, runtime.Options{Threads: d.cfg.Threads, Delegate: d.cfg.Delegate},
		pipeline.Interpreters(d.cfg.Interpreters, len(d.cfg.cameras), d.cfg.Threads))
	if err != nil {
		return nil, nil, lt, fmt.Errorf("model %s: %w", b.ModelPath, err)
	}
	lt.build += time.Since(t1)
	defer shared.Close() // the scorers' pipelines hold it from here
	var out []*scorer
	fail := func(err error) (*models.Bundle, []*scorer, loadTimes, error) {
		for _, s := range out {
			s.close()
		}
		return nil, nil, lt, err
	}
	for _, cc := range d.cfg.cameras {
		t1 := time.Now()
		s, err := d.newScorer(b, shared, cc)
		if err != nil {
			return fail(err)
		}
		out = append(out, s)
		t2 := time.Now()
		if err := warmUp(s.pipe); err != nil {
			return fail(fmt.Errorf("model %s: warm-up frame: %w", b.ModelPath, err))
		}
		lt.build += t2.Sub(t1)
		lt.warmup += time.Since(t2)
	}
	return b, out, lt, nil
}

// newScorer makes camera cc's pipeline on shared (bundle b) with its
// threshold: the camera's own setting, else its calibration if made with
// this model, else the bundle's.
func (d *daemon) newScorer(b *models.Bundle, shared *pipeline.Model, cc CameraConfig) (*scorer, error) {
	rec, path, err := calibration.Read(d.cfg.CalibrationDir, cc.name)
	if err != nil {
		return nil, fmt.Errorf("camera %s: calibration (GNLD_CALIBRATION_DIR=%s): %w", cc.name, d.cfg.CalibrationDir, err)
	}
	p := shared.Pipeline()
	m := b.Meta
	s := &scorer{pipe: p, model: publish.Model{Name: m.Name, Version: m.Version, SHA256: m.ModelSHA256}, thresholdSource: fromBundle}
	if s.drift, err = d.newDrift(b, cc.name); err != nil {
		p.Close()
		return nil, err
	}
	switch {
	case cc.Threshold != nil:
		p.SetThreshold(float32(*cc.Threshold))
		s.thresholdSource = fromConfig
		if rec != nil {
			d.log.Info("calibration: not used, GNLD_CAMERA_"+strings.ToUpper(cc.name)+"_THRESHOLD is set", "camera", cc.name, "file", path)
		}
	case rec.Applies(m.ModelSHA256):
		p.SetThreshold(float32(rec.Threshold))
		s.thresholdSource = fromCalibration
	case rec != nil:
		d.log.Warn("calibration: made with another model, not used; the bundle's threshold applies until you run gnlctl calibrate again",
			"camera", cc.name, "file", path, "calibrated_version", rec.Model.Version, "model_version", m.Version)
	}
	return s, nil
}

// warmUp runs one mid-grey frame through p: the first invoke of an
// interpreter is slower than the rest, and a model that cannot score it
// (an error, NaN or infinite score) must not go into service.
func warmUp(p *pipeline.Pipeline) error {
	m := p.Meta()
	frame := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(128, 128, 128, 0), m.Input.Height, m.Input.Width, gocv.MatTypeCV8UC3)
	defer frame.Close()
	res, err := p.Process(frame)
	if err != nil {
		return err
	}
	if s := float64(res.Score); math.IsNaN(s) || math.IsInf(s, 0) {
		return fmt.Errorf("score %v: the model's output is not a finite map; re-export the bundle with `gnl export`", res.Score)
	}
	return nil
}

// reload is the hot model swap (SIGHUP, GNLD_MODEL_WATCH): it loads the
// bundle in GNLD_MODEL_DIR and the calibration records beside the model
// in service and checks them (loadScorers). Then every camera's worker
// takes its new scorer between two frames: the frame before is scored by
// the old model, the frame after by the new one, none is skipped, and
// each result names the model that scored it. A bundle or record that
// fails is refused and the old model keeps serving.
//
// reload logs its outcome in one line (callers need not log it again) and
// returns the refusal's error. Safe from any goroutine; one reload runs
// at a time. ctx is not used to abandon a load half-way (it is short) but
// a reload asked for after ctx is done does nothing.
func (d *daemon) reload(ctx context.Context) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	serving := d.model().Meta
	fp := modelFingerprint(d.cfg.ModelDir)
	t0 := time.Now()
	b, set, lt, err := d.loadScorers()
	d.loadedFP = fp // a refused bundle is not retried until it changes again
	if err != nil {
		n := d.refused.Add(1)
		msg := err.Error()
		d.refusal.Store(&msg)
		d.log.Error("model: reload refused; the old model keeps serving", "serving", serving.Version, "refused", n, "err", err)
		d.pub.StatsNow()
		return err
	}
	d.reloaded.Add(1)
	for i, c := range d.cams {
		if stale := c.next.Swap(set[i]); stale != nil {
			stale.close() // an earlier reload the worker had not taken yet
		}
	}
	d.bundle.Store(b)
	m := b.Meta
	d.metrics.SetModel(m.Name, m.Version, m.ModelSHA256)
	d.log.Info("model: reloaded; each camera switches before its next frame", "from", serving.Version,
		"name", m.Name, "version", m.Version, "sha256", m.ModelSHA256[:12], "thresholds", thresholds(d.cams, set),
		"load_ms", ms(lt.load), "build_ms", ms(lt.build), "warmup_ms", ms(lt.warmup), "total_ms", ms(time.Since(t0)))
	return nil
}

// thresholds is "camera=source:value,..." for the log.
func thresholds(cams []*camera, set []*scorer) string {
	var parts []string
	for i, s := range set {
		parts = append(parts, fmt.Sprintf("%s=%s:%.4g", cams[i].name, s.thresholdSource, s.pipe.Threshold()))
	}
	return strings.Join(parts, ",")
}

// reloads calls reload on every SIGHUP (hup) and, with GNLD_MODEL_WATCH,
// when the bundle's files have changed and then stayed unchanged for one
// period. It returns when ctx is done.
func (d *daemon) reloads(ctx context.Context, hup <-chan os.Signal) {
	var tick <-chan time.Time
	if d.cfg.ModelWatch > 0 {
		t := time.NewTicker(d.cfg.ModelWatch)
		defer t.Stop()
		tick = t.C
	}
	var last string // the fingerprint seen at the previous tick
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			d.log.Info("model: SIGHUP, reloading", "dir", d.cfg.ModelDir)
			d.reloadNotified(ctx)
		case <-tick:
			fp := modelFingerprint(d.cfg.ModelDir)
			d.reloadMu.Lock()
			changed := fp != d.loadedFP
			d.reloadMu.Unlock()
			if changed && fp == last {
				d.log.Info("model: GNLD_MODEL_DIR changed, reloading", "dir", d.cfg.ModelDir)
				d.reloadNotified(ctx)
			}
			last = fp
		}
	}
}

// modelFingerprint identifies the files in the bundle folder dir
// (through a symbolic link): the real path and each file's name, size,
// modification time and inode. It changes when a file is written or
// replaced, or the link is pointed elsewhere. It reads no file.
func modelFingerprint(dir string) string {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "missing: " + err.Error()
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	var sb strings.Builder
	sb.WriteString(real)
	for _, e := range entries {
		st, err := e.Info()
		if err != nil || !st.Mode().IsRegular() {
			continue // gone meanwhile, or not a file
		}
		var ino uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
		fmt.Fprintf(&sb, "|%s:%d:%d:%d", e.Name(), st.Size(), st.ModTime().UnixNano(), ino)
	}
	return sb.String()
}
