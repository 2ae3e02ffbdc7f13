package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"gnld/capture"
	"gnld/drift"
	"gnld/models"
	"gnld/pipeline"
	"gnld/web"
)

// The technicians' page (package web) and the drift monitor (package
// drift). Both watch every scored frame through observe, which the worker
// calls after publishing the result: the page records the score (and
// copies the frame only while a browser watches), the monitor measures
// every GNLD_DRIFT_EVERY-th frame. A camera's monitor belongs to its
// scorer (model.go): it compares frames with that bundle's drift.json,
// and a model swap brings a new one.

// logDrift says, once per bundle loaded, when its drift monitor is off or
// partial.
func (d *daemon) logDrift(b *models.Bundle) {
	switch {
	case d.cfg.DriftEvery == 0:
		d.log.Info("drift monitor off (GNLD_DRIFT_EVERY=0)")
	case b.Drift == nil:
		d.log.Info("drift monitor off: the bundle has no drift.json; `gnl drift-stats --data DATA --bundle BUNDLE` writes one",
			"bundle", b.Dir)
	case b.Drift.Features[models.DriftScore].Count == 0:
		d.log.Info("drift monitor: drift.json has no held-back score distribution; image statistics only", "bundle", b.Dir)
	}
}

// newDrift makes camera's drift monitor for bundle b; nil when off.
func (d *daemon) newDrift(b *models.Bundle, camera string) (*drift.Monitor, error) {
	if d.cfg.DriftEvery == 0 || b.Drift == nil {
		return nil, nil
	}
	return drift.New(b.Drift, drift.Config{
		Every: d.cfg.DriftEvery, Window: d.cfg.DriftWindow, Threshold: d.cfg.DriftThreshold,
		OnChange: func(s drift.Status) { d.driftChanged(camera, s) },
	})
}

// driftStatus is camera c's drift state now; nil when its monitor is off.
// Safe from any goroutine.
func (c *camera) driftStatus() *drift.Status {
	s := c.serving.Load()
	if s == nil || s.drift == nil {
		return nil
	}
	st := s.drift.Status()
	return &st
}

// setupWatch makes the page when GNLD_HTTP_ADDR is on, and adds the drift
// monitors to /metrics. Called by newDaemon once the cameras exist.
func (d *daemon) setupWatch() {
	d.metrics.Registry().MustRegister(&driftCollector{d})
	if d.cfg.httpListen == "" {
		return
	}
	d.page = web.New(web.Model(d.cams[0].serving.Load().model),
		web.Options{Device: d.cfg.Device, Site: d.cfg.Site, History: d.cfg.PageHistory})
	for _, c := range d.cams {
		c.page = d.page.Camera(c.name, c.driftStatus)
		s := c.serving.Load()
		c.page.SetModel(web.Model(s.model), s.product)
	}
}

// observe shows one frame scored by s to the page and to s's drift
// monitor. It runs in c's worker.
func (d *daemon) observe(c *camera, s *scorer, f capture.Frame, res pipeline.Result) {
	if c.page != nil {
		c.page.Observe(f.Mat, f.Seq, f.Time, res)
	}
	if s.drift != nil {
		if err := s.drift.Observe(f.Mat, res.Score); err != nil {
			d.log.Warn("drift: frame not measured", "camera", f.Camera, "seq", f.Seq, "err", err)
		}
	}
}

// driftChanged runs in the camera's worker when its drift state changes:
// one log line, and the stats topic at once rather than at the next tick.
func (d *daemon) driftChanged(camera string, s drift.Status) {
	if s.State == drift.Warning {
		d.log.Warn("drift warning: frames no longer look like the training images", "camera", camera,
			"feature", s.Feature, "z", s.Features[s.Feature], "score", s.Score, "hint", s.Hint)
	} else {
		d.log.Info("drift back to ok", "camera", camera, "score", s.Score)
	}
	d.pub.StatsNow()
}

// driftCollector adds the drift monitors to /metrics, read at scrape time.
type driftCollector struct{ d *daemon }

var (
	driftScoreDesc = prometheus.NewDesc("gnld_drift_score",
		"Drift score of the camera: the largest median z (training spreads) over the drift features; warning at GNLD_DRIFT_THRESHOLD.",
		[]string{"camera"}, nil)
	driftWarningDesc = prometheus.NewDesc("gnld_drift_warning",
		"1 while the camera's drift state is warning, else 0.", []string{"camera"}, nil)
	driftFeatureDesc = prometheus.NewDesc("gnld_drift_feature_z",
		"Median z of one drift feature over the window: (value - training median) / training spread; negative is below.",
		[]string{"camera", "feature"}, nil)
)

func (dc *driftCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- driftScoreDesc
	ch <- driftWarningDesc
	ch <- driftFeatureDesc
}

func (dc *driftCollector) Collect(ch chan<- prometheus.Metric) {
	for _, c := range dc.d.cams {
		s := c.driftStatus()
		if s == nil {
			continue
		}
		warn := 0.0
		if s.State == drift.Warning {
			warn = 1
		}
		ch <- prometheus.MustNewConstMetric(driftScoreDesc, prometheus.GaugeValue, s.Score, c.name)
		ch <- prometheus.MustNewConstMetric(driftWarningDesc, prometheus.GaugeValue, warn, c.name)
		for f, z := range s.Features {
			ch <- prometheus.MustNewConstMetric(driftFeatureDesc, prometheus.GaugeValue, z, c.name, f)
		}
	}
}
