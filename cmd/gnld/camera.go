package main

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"gnld/capture"
	"gnld/drift"
	"gnld/internal/metrics"
	"gnld/pipeline"
	"gnld/publish"
	"gnld/web"
)

// camera is one camera's capture-score-publish loop: its capture, its
// model in service (used only by its worker goroutine, run), its trigger
// queue in trigger mode, its product changeovers, and its counters (read
// by the stats timer, /metrics, STATUS). The daemon (d) gives it the
// parts every camera shares: the publisher, the log, the page, health.
type camera struct {
	d    *daemon
	name string
	cfg  CameraConfig
	cap  *capture.Camera
	// serving is the scorer the worker uses; next is one a reload has
	// made and the worker takes before its next frame.
	serving, next atomic.Pointer[scorer]
	trig          *triggerQueue // nil unless GNLD_CAMERA_<NAME>_TRIGGER=mqtt
	metrics       *metrics.Camera
	page          *web.Camera // nil: no page

	// changes are product changeovers (changeover.go) in the order their
	// messages came, each taken by the worker before the first frame
	// captured after its message; refused is the last one taken if it
	// failed: the camera then publishes no verdict until the next.
	changeMu sync.Mutex
	changes  []*changeover
	refused  atomic.Pointer[changeover]

	processed, anomalous, skipped, swaps atomic.Uint64
	unscored                             atomic.Uint64 // frames not scored: product refused
	changeovers, changeoversRefused      atomic.Uint64
	productBad                           atomic.Uint64 // product messages that could not be read

	beat          atomic.Int64 // d.clock() at the worker's last beat (health.go)
	lastFrame     atomic.Int64 // d.clock() when the worker last got a frame
	done          atomic.Bool  // the worker has returned
	score         lastScore    // last score, for STATUS
	lastAnomalous atomic.Bool
}

// cameraStats is one camera's part of the stats topic.
type cameraStats struct {
	capture.Stats
	Processed       uint64        `json:"processed"`
	Anomalous       uint64        `json:"anomalous"`
	Skipped         uint64        `json:"skipped"` // frames the pipeline refused
	ModelVersion    string        `json:"model_version"`
	Model           publish.Model `json:"model"`
	Product         string        `json:"product,omitempty"` // GNLD_MODEL_ROOT: the product in force
	ThresholdSource string        `json:"threshold_source"`
	Swaps           uint64        `json:"model_swaps"` // reloads and changeovers this camera's worker has taken
	Changeover      *changeStats  `json:"changeover,omitempty"`
	Trigger         *triggerStats `json:"trigger,omitempty"`
	Drift           *drift.Status `json:"drift,omitempty"` // absent: drift monitor off
}

// changeStats is a camera's product changeovers in the stats topic
// (GNLD_MODEL_ROOT set).
type changeStats struct {
	Done        uint64 `json:"done"`         // changeovers put into service
	Refused     uint64 `json:"refused"`      // unknown products, bundles that failed their checks
	BadMessages uint64 `json:"bad_messages"` // product messages that could not be read
	Unscored    uint64 `json:"unscored"`     // frames published as not_scored while a product was refused
	LastRefusal string `json:"last_refusal,omitempty"`
}

func (c *camera) stats() cameraStats {
	st := cameraStats{
		Processed: c.processed.Load(), Anomalous: c.anomalous.Load(), Skipped: c.skipped.Load(),
		Swaps: c.swaps.Load(),
	}
	if c.cap != nil {
		st.Stats = c.cap.Stats()
	}
	if s := c.serving.Load(); s != nil {
		st.ModelVersion, st.Model, st.Product, st.ThresholdSource = s.model.Version, s.model, s.product, s.thresholdSource
	}
	if c.d.cfg.ModelRoot != "" {
		st.Changeover = &changeStats{Done: c.changeovers.Load(), Refused: c.changeoversRefused.Load(),
			BadMessages: c.productBad.Load(), Unscored: c.unscored.Load()}
		if r := c.refused.Load(); r != nil {
			st.Product = r.product
			st.Changeover.LastRefusal = r.err.Error()
		}
	}
	if c.trig != nil {
		ts := c.trig.stats()
		st.Trigger = &ts
	}
	st.Drift = c.driftStatus()
	return st
}

// run is the camera's worker: it scores its frames until its capture
// closes Frames: every frame, or in trigger mode the first frame after
// each trigger. A frame the pipeline refuses is counted and skipped; any
// other pipeline error is fatal (the interpreter is broken) and stops
// gnld. It beats (health.go) after each frame and, while no frame comes,
// every liveWindow/2.
func (c *camera) run() error {
	defer c.done.Store(true)
	if c.trig != nil {
		return c.runTriggered()
	}
	d := c.d
	tick := time.NewTicker(d.liveWindow() / 2)
	defer tick.Stop()
	for {
		select {
		case f, ok := <-c.cap.Frames():
			if !ok {
				return nil
			}
			c.lastFrame.Store(d.clock())
			if testStall != nil {
				testStall(f.Camera)
			}
			_, err := c.process(f, nil)
			f.Close()
			if err != nil {
				return err
			}
		case <-tick.C:
		}
		d.beat(c)
	}
}

// runTriggered is run in trigger mode: for each trigger, in order, it
// scores the first frame captured after the trigger arrived and closes
// the frames before it unscored. It beats like run.
func (c *camera) runTriggered() error {
	d, q := c.d, c.trig
	var cur *trigger // the trigger waiting for its frame
	defer func() { q.stop(cur) }()
	tick := time.NewTicker(d.liveWindow() / 2)
	defer tick.Stop()
	frames := c.cap.Frames()
	for {
		var next <-chan trigger // nil (never ready) while cur waits
		if cur == nil {
			next = q.ch
		}
		var f capture.Frame
		var ok bool
		select {
		case t := <-next:
			cur = &t
			if c.cap.Triggered() {
				var err error
				if cur, err = c.fire(cur); err != nil {
					return err
				}
				d.beat(c)
			}
			continue
		case <-tick.C:
			d.beat(c)
			continue
		case f, ok = <-frames:
		}
		if !ok {
			return nil
		}
		c.lastFrame.Store(d.clock())
		if cur == nil { // a trigger may have come in with this frame
			select {
			case t := <-q.ch:
				cur = &t
			default:
			}
		}
		if cur == nil || f.Time.Before(cur.at) {
			f.Close()
			q.notScored.Add(1)
			d.beat(c)
			continue
		}
		if testStall != nil {
			testStall(f.Camera)
		}
		scored, err := c.process(f, cur)
		f.Close()
		if err != nil {
			return err
		}
		if scored { // else the next frame answers it
			q.answered.Add(1)
			cur = nil
		} else if c.cap.Triggered() { // which the camera gives when triggered again
			if cur, err = c.fire(cur); err != nil {
				return err
			}
		}
		d.beat(c)
	}
}

// fire fires a software-triggered camera's trigger for t. It returns t,
// still waiting, when the frame that answers it is on the camera's
// Frames; else nil, having answered t with a not_scored result that says
// why (no frame, so no sequence number), counted in no_frame: the PLC gets
// an answer for every part it triggered.
func (c *camera) fire(t *trigger) (*trigger, error) {
	err := c.cap.Trigger()
	if err == nil {
		return t, nil
	}
	q := c.trig
	n := q.noFrame.Add(1)
	q.answered.Add(1)
	c.d.log.Warn("trigger answered not_scored: the camera gave no frame", "camera", c.name, "part_id", t.partID, "err", err, "no_frame", n)
	r := publish.Result{
		RunID: c.d.runID, Timestamp: time.Now().UTC(), Camera: c.name,
		Verdict: publish.NotScored, Reason: "no frame from the camera: " + err.Error(),
		PartID: t.partID, Trigger: t.fields, LatencyMS: publish.Latency{Trigger: ms(time.Since(t.at))},
	}
	if err := c.d.pub.Result(r); err != nil {
		return nil, err
	}
	c.d.spark.Result(r)
	return nil, nil
}

// takeNext puts a product changeover (changeover.go) or a scorer made by
// reload into service, between two frames: f is the first frame the new
// model scores. It returns the scorer for f, or nil when the camera's
// product was refused and f must not be scored.
func (c *camera) takeNext(f capture.Frame) *scorer {
	if co := c.takeChange(f); co != nil {
		if co.err != nil {
			c.refused.Store(co)
		} else {
			c.refused.Store(nil)
			c.switchTo(co.s, f, "product "+co.product)
		}
		return c.current()
	}
	if next := c.next.Swap(nil); next != nil {
		c.switchTo(next, f, "reload")
	}
	return c.current()
}

// current is the scorer for the next frame: nil while a product is refused.
func (c *camera) current() *scorer {
	if c.refused.Load() != nil {
		return nil
	}
	return c.serving.Load()
}

// switchTo serves s from frame f on.
func (c *camera) switchTo(s *scorer, f capture.Frame, why string) {
	d := c.d
	t0 := time.Now()
	old := c.serving.Swap(s)
	old.close()
	c.swaps.Add(1)
	if c.page != nil {
		c.page.SetModel(web.Model(s.model), s.product)
	}
	if d.page != nil && c == d.cams[0] {
		d.page.SetModel(web.Model(s.model))
	}
	d.setModelMetrics()
	d.log.Info("model: camera switched", "camera", c.name, "from", old.model.Version, "to", s.model.Version,
		"why", why, "product", s.product, "threshold", s.pipe.Threshold(), "threshold_source", s.thresholdSource, "first_seq", f.Seq,
		"pause_ms", ms(time.Since(t0)))
}

// process scores frame f with the camera's model and publishes the
// result; t is the trigger it answers, or nil. It reports whether f was
// scored: false for a frame the pipeline refused. While the camera's
// product is refused, f is published as not scored (and answers t).
func (c *camera) process(f capture.Frame, t *trigger) (bool, error) {
	d := c.d
	s := c.takeNext(f)
	if s == nil {
		return true, c.publishUnscored(f, t)
	}
	res, err := s.pipe.Process(f.Mat)
	if errors.Is(err, pipeline.ErrFrame) {
		c.skipped.Add(1)
		d.log.Warn("frame skipped", "camera", f.Camera, "seq", f.Seq, "file", f.File, "err", err)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("camera %s frame %d: %w", f.Camera, f.Seq, err)
	}
	c.processed.Add(1)
	if res.Anomalous {
		c.anomalous.Add(1)
	}
	total := time.Since(f.Time)
	c.metrics.Observe(float64(res.Score), float64(res.Threshold), res.Timings.Normalize, res.Timings.Invoke, res.Timings.Post, total)
	c.score.set(float64(res.Score))
	c.lastAnomalous.Store(res.Anomalous)
	r := publish.Result{
		RunID: d.runID, Timestamp: f.Time.UTC(), Sequence: f.Seq, Camera: f.Camera, File: f.File,
		Model: s.model, Product: s.product, Score: res.Score, Threshold: res.Threshold, ThresholdSource: s.thresholdSource,
		Verdict: publish.Verdict(res.Anomalous),
		LatencyMS: publish.Latency{
			Normalize: ms(res.Timings.Normalize), Invoke: ms(res.Timings.Invoke), Post: ms(res.Timings.Post),
			Total: ms(total),
		},
	}
	if s.drift != nil {
		r.Drift = s.drift.Status().State // from the frames before this one (observe, below)
	}
	if t != nil {
		r.PartID, r.Trigger, r.LatencyMS.Trigger = t.partID, t.fields, ms(time.Since(t.at))
	}
	d.log.Debug("frame", "camera", r.Camera, "seq", r.Sequence, "file", r.File, "score", r.Score,
		"threshold", r.Threshold, "verdict", r.Verdict, "model", r.Model.Version, "normalize_ms", r.LatencyMS.Normalize,
		"invoke_ms", r.LatencyMS.Invoke, "post_ms", r.LatencyMS.Post, "total_ms", r.LatencyMS.Total)
	if t != nil {
		d.log.Debug("trigger answered", "camera", r.Camera, "part_id", r.PartID, "seq", r.Sequence, "trigger_ms", r.LatencyMS.Trigger)
	}
	if err := d.pub.Result(r); err != nil {
		return false, err
	}
	d.spark.Result(r) // never blocks; nil: Sparkplug off
	d.observe(c, s, f, res)
	d.keep(s, f, res, r)
	switch d.cfg.Map {
	case "png":
		png, err := s.pipe.Heatmap(f.Mat, res)
		if err != nil {
			d.log.Warn("heatmap failed", "camera", f.Camera, "seq", f.Seq, "err", err)
			return true, nil
		}
		d.pub.Map(f.Camera, png)
	case "raw":
		d.pub.Map(f.Camera, bytes.Clone(s.pipe.RawMap8(res))) // RawMap8 reuses its buffer
	}
	return true, nil
}

// publishUnscored publishes frame f as not scored, naming the refused
// product and why, so that a PLC waiting for a verdict gets an answer it
// cannot mistake for one.
func (c *camera) publishUnscored(f capture.Frame, t *trigger) error {
	co := c.refused.Load()
	c.unscored.Add(1)
	r := publish.Result{
		RunID: c.d.runID, Timestamp: f.Time.UTC(), Sequence: f.Seq, Camera: f.Camera, File: f.File,
		Product: co.product, Verdict: publish.NotScored, Reason: co.err.Error(),
		LatencyMS: publish.Latency{Total: ms(time.Since(f.Time))},
	}
	if t != nil {
		r.PartID, r.Trigger, r.LatencyMS.Trigger = t.partID, t.fields, ms(time.Since(t.at))
	}
	if err := c.d.pub.Result(r); err != nil {
		return err
	}
	c.d.spark.Result(r)
	return nil
}
