package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"time"

	"gnld/calibration"
	"gnld/drift"
	"gnld/internal/registry"
	"gnld/models"
	"gnld/pipeline"
	"gnld/publish"
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
	pipe  *pipeline.Pipeline
	model publish.Model
	dir   string // the bundle's folder
	// base is the folder dir was taught from (teach.go): the camera's own
	// model or its product's; dir itself when nothing is taught.
	base            string
	product         string // GNLD_MODEL_ROOT: the product it serves; "": the camera's own model
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

// modelDir is where camera cc's own model is: GNLD_CAMERA_<NAME>_MODEL,
// else GNLD_MODEL_DIR; and the setting that says so, for errors.
func (c *Config) modelDir(cc CameraConfig) (dir, setting string) {
	if cc.Model != "" {
		return cc.Model, prefix + "_CAMERA_" + strings.ToUpper(cc.name) + "_MODEL"
	}
	return c.ModelDir, prefix + "_MODEL_DIR"
}

// want is what camera i serves: its own model's folder, or the folder of
// the product it serves (product != ""), or a taught version of either
// (base: the folder taught, teach.go).
type want struct{ dir, product, base string }

// settingOf names where w's folder comes from, for errors.
func (d *daemon) settingOf(i int, w want) string {
	if w.product != "" {
		return prefix + "_MODEL_ROOT/" + w.product
	}
	_, setting := d.cfg.modelDir(d.cfg.cameras[i])
	return setting
}

// loadScorers loads the bundle each camera wants (ws[i]) through the
// registry, which loads and checks each folder once however many cameras
// use it (registry.Load: metadata, model hash, tensors, a warm-up frame),
// and makes one scorer per camera with its calibration and drift
// monitor, each checked by a warm-up frame of its own. On error nothing
// made here stays open.
func (d *daemon) loadScorers(ws []want) ([]*scorer, loadTimes, error) {
	var lt loadTimes
	count := map[string]int{}
	for _, w := range ws {
		count[w.dir]++
	}
	loaded := map[string]*registry.Loaded{}
	for i, w := range ws {
		if loaded[w.dir] != nil {
			continue
		}
		l, err := d.reg.Load(w.dir, count[w.dir])
		if err != nil {
			return nil, lt, fmt.Errorf("model bundle (%s=%s): %w", d.settingOf(i, w), w.dir, err)
		}
		d.logDrift(l.Bundle)
		loaded[w.dir] = l
		lt.load += l.Took.Load
		lt.build += l.Took.Build
		lt.warmup += l.Took.Warmup
	}
	var out []*scorer
	for i, cc := range d.cfg.cameras {
		t0 := time.Now()
		s, err := d.newScorer(loaded[ws[i].dir], cc, ws[i].product, true)
		if err != nil {
			for _, s := range out {
				s.close()
			}
			return nil, lt, err
		}
		lt.warmup += time.Since(t0)
		if ws[i].base != "" {
			s.base = ws[i].base
		}
		out = append(out, s)
	}
	return out, lt, nil
}

// newScorer makes camera cc's pipeline on bundle l with its threshold:
// the camera's own setting, else its calibration if made with this model,
// else the bundle's; with warm, it then checks it with one warm-up frame
// (a changeover to a preloaded bundle skips it: the registry warmed and
// checked the bundle's interpreters when it loaded them).
func (d *daemon) newScorer(l *registry.Loaded, cc CameraConfig, product string, warm bool) (*scorer, error) {
	b := l.Bundle
	rec, path, err := calibration.Read(d.cfg.CalibrationDir, cc.name)
	if err != nil {
		return nil, fmt.Errorf("camera %s: calibration (GNLD_CALIBRATION_DIR=%s): %w", cc.name, d.cfg.CalibrationDir, err)
	}
	p := l.Model.Pipeline()
	m := b.Meta
	s := &scorer{pipe: p, model: publish.Model{Name: m.Name, Version: m.Version, SHA256: m.ModelSHA256},
		dir: l.Dir, base: l.Dir, product: product, thresholdSource: fromBundle}
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
	case rec.Applies(m.ModelSHA256) || rec != nil && taughtFrom(m, rec.Model.SHA256):
		p.SetThreshold(float32(rec.Threshold))
		s.thresholdSource = fromCalibration
	case rec != nil:
		d.log.Warn("calibration: made with another model, not used; the bundle's threshold applies until you run gnlctl calibrate again",
			"camera", cc.name, "file", path, "calibrated_version", rec.Model.Version, "model_version", m.Version)
	}
	if !warm {
		return s, nil
	}
	if err := registry.WarmUp(p); err != nil {
		s.close()
		return nil, fmt.Errorf("model %s: warm-up frame: %w", b.ModelPath, err)
	}
	return s, nil
}

// wants is what every camera serves now: the folder of its scorer in
// service (its own model, or its product's), or its last taught version.
func (d *daemon) wants() []want {
	ws := make([]want, len(d.cams))
	for i, c := range d.cams {
		if s := c.serving.Load(); s != nil {
			ws[i] = want{d.taughtOr(c.name, s.base), s.product, s.base}
		} else {
			dir, _ := d.cfg.modelDir(c.cfg)
			ws[i] = want{d.taughtOr(c.name, dir), "", dir}
		}
	}
	return ws
}

// taughtFrom reports whether the bundle m was taught (teach.go) from the
// model whose SHA-256 is sha: a calibration made with that model still
// holds, since teaching changes what is normal only for the frames taught.
func taughtFrom(m models.Meta, sha string) bool {
	if m.Memory == nil || m.Memory.Teach == nil {
		return false
	}
	for _, t := range m.Memory.Teach.Taught {
		if t.FromSHA256 != "" && t.FromSHA256 == sha {
			return true
		}
	}
	return false
}

// fingerprints identifies the files of every bundle folder in service:
// folder -> registry.Fingerprint, for GNLD_MODEL_WATCH.
func fingerprints(ws []want) map[string]string {
	fps := make(map[string]string, len(ws))
	for _, w := range ws {
		if _, ok := fps[w.dir]; !ok {
			fps[w.dir] = registry.Fingerprint(w.dir)
		}
	}
	return fps
}

// changedOnDisk reports whether a bundle folder in service (fps, from
// fingerprints) has changed since the registry loaded it, and since a
// reload last refused it. Called under reloadMu.
func (d *daemon) changedOnDisk(fps map[string]string) bool {
	for dir, fp := range fps {
		if l := d.reg.Loaded(dir); (l == nil || l.Fingerprint != fp) && d.refusedFP[dir] != fp {
			return true
		}
	}
	return false
}

// reload is the hot model swap (SIGHUP, GNLD_MODEL_WATCH): it loads the
// bundle each camera serves (its own, or its product's) afresh, with the
// calibration records, and checks them (loadScorers). Then every camera's
// worker takes its new scorer between two frames: the frame before is
// scored by the old model, the frame after by the new one, none is
// skipped, and each result names the model that scored it. A bundle or
// record that fails is refused and the old model keeps serving. A camera
// with a product changeover under way is left to it.
//
// reload logs its outcome in one line (callers need not log it again) and
// returns the refusal's error. Safe from any goroutine; one reload or
// changeover runs at a time. ctx is not used to abandon a load half-way
// (it is short) but a reload asked for after ctx is done does nothing.
func (d *daemon) reload(ctx context.Context) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	serving := d.model().Meta
	ws := d.wants()
	t0 := time.Now()
	set, lt, err := d.loadScorers(ws)
	if err != nil {
		for _, w := range ws { // a refused bundle is not retried until it changes again
			d.refusedFP[w.dir] = registry.Fingerprint(w.dir)
		}
		n := d.refused.Add(1)
		msg := err.Error()
		d.refusal.Store(&msg)
		d.log.Error("model: reload refused; the old model keeps serving", "serving", serving.Version, "refused", n, "err", err)
		d.pub.StatsNow()
		return err
	}
	d.reloaded.Add(1)
	for i, c := range d.cams {
		if c.pendingChange() {
			set[i].close() // the changeover brings its own
			continue
		}
		if stale := c.next.Swap(set[i]); stale != nil {
			stale.close() // an earlier reload the worker had not taken yet
		}
	}
	b := d.reg.Loaded(ws[0].dir).Bundle
	d.bundle.Store(b)
	m := b.Meta
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
	var last map[string]string // the fingerprints seen at the previous tick
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			d.log.Info("model: SIGHUP, reloading", "dir", d.cfg.ModelDir)
			d.reloadNotified(ctx)
		case <-tick:
			fps := fingerprints(d.wants())
			d.reloadMu.Lock()
			changed := d.changedOnDisk(fps)
			d.reloadMu.Unlock()
			if changed && maps.Equal(fps, last) {
				d.log.Info("model: GNLD_MODEL_DIR changed, reloading", "dir", d.cfg.ModelDir)
				d.reloadNotified(ctx)
			}
			last = fps
		}
	}
}
