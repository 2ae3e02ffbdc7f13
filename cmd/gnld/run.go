package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"gnld/capture"
	"gnld/drift"
	"gnld/internal/httpserver"
	"gnld/internal/metrics"
	"gnld/internal/sdnotify"
	"gnld/models"
	"gnld/pipeline"
	"gnld/publish"
	"gnld/web"
)

// run is gnld: it returns when ctx is cancelled (SIGINT, SIGTERM) and the
// shutdown has finished, when every camera had a finite source that ended
// (GNLD_EXIT_WHEN_DONE), or on a fatal error. Start-up problems (config,
// model bundle, spool folder) return an error before anything runs.
//
// Shutdown goes front to back: the cameras stop reading, the frames in
// flight are scored, the publisher publishes or spools every result and
// sends "offline". It must finish within GNLD_SHUTDOWN_TIMEOUT.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	// SIGHUP reloads the model (daemon.reloads). Caught from the start, so
	// that one sent while gnld starts does not end it: it reloads once
	// gnld runs.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	fs := flag.NewFlagSet("gnld", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(stderr) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: gnld is configured by GNLD_* variables (gnld -h)", fs.Arg(0))
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	d, err := newDaemon(cfg, log)
	if err != nil {
		return err
	}
	defer d.close()
	return d.run(ctx, hup)
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon holds what run starts: one camera, scorer and counters per
// camera, and one publisher.
type daemon struct {
	cfg     *Config
	log     *slog.Logger
	runID   string
	cams    []*camera
	pub     *publish.Publisher
	http    *httpserver.Server // nil: GNLD_HTTP_ADDR is off
	notify  *sdnotify.Notifier
	metrics *metrics.Metrics
	page    *web.Hub     // nil: GNLD_HTTP_ADDR is off
	state   atomic.Int32 // stateStarting, stateRunning, stateStopping
	epoch   time.Time    // when newDaemon began: the origin of clock()
	// busy: workers may still be inside a pipeline (a shutdown that timed
	// out), so close must not free the pipelines under them.
	busy bool

	bundle   atomic.Pointer[models.Bundle] // the bundle loaded last
	reloadMu sync.Mutex                    // one reload at a time; guards loadedFP
	loadedFP string                        // modelFingerprint when the last load began
	// reloaded and refused count reloads put into service and refused;
	// refusal is the last refusal's error (stats topic).
	reloaded, refused atomic.Uint64
	refusal           atomic.Pointer[string]
}

// modelStats is the "model" part of the stats topic: the bundle loaded
// last and the reloads since start.
type modelStats struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	SHA256      string `json:"sha256"`
	Reloads     uint64 `json:"reloads"`                // bundles loaded and put into service
	Refused     uint64 `json:"reloads_refused"`        // bundles refused; the model in service stayed
	LastRefusal string `json:"last_refusal,omitempty"` // why the last one was refused
}

func (d *daemon) modelStats() any {
	m := d.model().Meta
	st := modelStats{Name: m.Name, Version: m.Version, SHA256: m.ModelSHA256, Reloads: d.reloaded.Load(), Refused: d.refused.Load()}
	if r := d.refusal.Load(); r != nil {
		st.LastRefusal = *r
	}
	return st
}

// camera is one camera's capture, its model (used only by its worker
// goroutine), its trigger queue in trigger mode and its counters (read by
// the stats timer, /metrics, STATUS).
type camera struct {
	name string
	cap  *capture.Camera
	// serving is the scorer the worker uses; next is one a reload has
	// made and the worker takes before its next frame.
	serving, next atomic.Pointer[scorer]
	trig          *triggerQueue // nil unless GNLD_CAMERA_<NAME>_TRIGGER=mqtt
	metrics       *metrics.Camera
	page          *web.Camera // nil: no page

	processed, anomalous, skipped, swaps atomic.Uint64

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
	ThresholdSource string        `json:"threshold_source"`
	Swaps           uint64        `json:"model_swaps"` // reloads this camera's worker has taken
	Trigger         *triggerStats `json:"trigger,omitempty"`
	Drift           *drift.Status `json:"drift,omitempty"` // absent: drift monitor off
}

// newDaemon loads the bundle and makes every part, so that a bad bundle,
// calibration, camera or spool stops start-up before any frame is read.
func newDaemon(cfg *Config, log *slog.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log, runID: newRunID(), notify: sdnotify.New(log), epoch: time.Now()}
	d.loadedFP = modelFingerprint(cfg.ModelDir)
	b, set, _, err := d.loadScorers()
	if err != nil {
		return nil, err
	}
	d.bundle.Store(b)
	d.metrics = metrics.New(metrics.Sources{Cameras: d.metricsCameras, Publisher: d.metricsPublisher,
		Model: func() metrics.ModelStats {
			return metrics.ModelStats{Reloads: d.reloaded.Load(), Refused: d.refused.Load()}
		}})
	d.metrics.SetModel(b.Meta.Name, b.Meta.Version, b.Meta.ModelSHA256)
	for i, cc := range cfg.cameras {
		c := &camera{name: cc.name, metrics: d.metrics.Camera(cc.name)}
		c.beat.Store(d.clock()) // starting is not being stuck
		c.lastFrame.Store(d.clock())
		c.serving.Store(set[i])
		c.score.set(math.NaN())
		d.cams = append(d.cams, c)
	}
	for i, c := range d.cams {
		if c.cap, err = capture.New(cfg.captureConfig(i), log); err != nil {
			d.close()
			return nil, err
		}
	}
	pc := cfg.publishConfig()
	pc.StatsExtra = d.cameraStats
	pc.StatsModel = d.modelStats
	if d.pub, err = publish.New(pc, log); err != nil {
		d.close()
		return nil, err
	}
	for i, c := range d.cams {
		if cfg.cameras[i].Trigger == "mqtt" {
			c.trig = newTriggerQueue(c.name, cfg.TriggerQueue, log)
			d.pub.Subscribe(d.pub.Topic(c.name, "trigger"), c.trig.receive)
		}
	}
	d.setupWatch()
	if err := d.listenHTTP(); err != nil {
		d.close()
		return nil, fmt.Errorf("GNLD_HTTP_ADDR=%s: %w", d.cfg.HTTPAddr, err)
	}
	return d, nil
}

// newRunID names this run: its start time (UTC, to the microsecond) and 4
// random bytes. The time alone could repeat: a clock set back, or an
// RTC-less device that boots at the same wrong time every day, and
// run_id + camera + sequence must identify a result.
func newRunID() string {
	var b [4]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405.000000Z") + "-" + hex.EncodeToString(b[:])
}

// model is the bundle loaded last (in service, or about to be).
func (d *daemon) model() *models.Bundle { return d.bundle.Load() }

func (d *daemon) close() {
	if d.http != nil {
		d.http.Close()
	}
	if d.busy {
		return // the process is about to exit anyway
	}
	for _, c := range d.cams {
		c.serving.Swap(nil).close()
		c.next.Swap(nil).close()
	}
}

func (d *daemon) cameraStats() any {
	out := map[string]cameraStats{}
	for _, c := range d.cams {
		st := cameraStats{
			Processed: c.processed.Load(), Anomalous: c.anomalous.Load(), Skipped: c.skipped.Load(),
			Swaps: c.swaps.Load(),
		}
		if c.cap != nil {
			st.Stats = c.cap.Stats()
		}
		if s := c.serving.Load(); s != nil {
			st.ModelVersion, st.ThresholdSource = s.model.Version, s.thresholdSource
		}
		if c.trig != nil {
			ts := c.trig.stats()
			st.Trigger = &ts
		}
		st.Drift = c.driftStatus()
		out[c.name] = st
	}
	return out
}

func (d *daemon) run(ctx context.Context, hup <-chan os.Signal) error {
	m := d.model().Meta
	names := make([]string, len(d.cams))
	for i, c := range d.cams {
		names[i] = c.name + "=" + d.cfg.cameras[i].spec.String()
		if c.trig != nil {
			names[i] += "(trigger)"
		}
	}
	d.log.Info("gnld: starting", "run_id", d.runID, "model", m.Name, "version", m.Version,
		"cameras", strings.Join(names, ","), "broker", publish.RedactURL(d.cfg.MQTTBroker), "site", d.cfg.Site, "device", d.cfg.Device)
	d.serveHTTP()
	defer d.stopHTTP()
	d.pub.Connect()

	// The publisher runs until Close, not until ctx: it must outlive the
	// cameras to publish what they captured. hard ends its tries on the
	// broker when the shutdown deadline passes.
	hard, giveUp := context.WithCancel(context.Background())
	defer giveUp()
	pubDone := make(chan struct{})
	go func() { d.pub.Run(hard); close(pubDone) }()

	g, gctx := errgroup.WithContext(ctx)
	for _, c := range d.cams {
		now := d.clock()
		c.beat.Store(now)
		c.lastFrame.Store(now)
		g.Go(func() error { return c.cap.Run(gctx) })
		g.Go(func() error { return d.work(c) })
	}
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()

	// Started: the model is loaded and the broker tried.
	d.state.Store(stateRunning)
	d.notify.Ready(d.statusLine(nil))
	stopStatus := make(chan struct{})
	go d.reportStatus(stopStatus)
	defer close(stopStatus)

	// Reloads (SIGHUP, GNLD_MODEL_WATCH), each between RELOADING=1 and
	// READY=1, until the shutdown begins.
	reloadCtx, stopReloads := context.WithCancel(ctx)
	defer stopReloads()
	reloadsDone := make(chan struct{})
	go func() { d.reloads(reloadCtx, hup); close(reloadsDone) }()

	var err error
	finished := false // the cameras and workers have returned
	select {
	case err = <-done: // finite sources ended, or a fatal error
		finished = true
		if err == nil && !d.cfg.ExitWhenDone {
			d.log.Info("gnld: every source has ended; waiting for a signal (GNLD_EXIT_WHEN_DONE=false)")
			d.idle(ctx)
		}
	case <-ctx.Done():
	}
	stopReloads()
	d.state.Store(stateStopping)
	d.notify.Stopping("stopping: finishing frames in flight, publishing the spool")
	defer d.keepAliveWhileStopping()()
	deadline := time.Now().Add(d.cfg.ShutdownTimeout)
	stopTimer := time.AfterFunc(d.cfg.ShutdownTimeout, giveUp)
	defer stopTimer.Stop()
	if !finished {
		d.log.Info("gnld: stopping", "cause", context.Cause(ctx), "timeout", d.cfg.ShutdownTimeout)
		select {
		case err = <-done:
		case <-hard.Done():
			d.busy = true
			return fmt.Errorf("shutdown: cameras and pipelines did not stop within GNLD_SHUTDOWN_TIMEOUT=%s", d.cfg.ShutdownTimeout)
		}
	}
	for _, c := range d.cams { // frames left by a worker that failed
		for f := range c.cap.Frames() {
			f.Close()
		}
	}
	<-reloadsDone // a reload in flight finishes before close frees its scorers
	d.pub.Close()
	select {
	case <-pubDone:
	case <-time.After(time.Until(deadline) + d.cfg.MQTTTimeout + time.Second):
		return fmt.Errorf("shutdown: publisher did not finish within GNLD_SHUTDOWN_TIMEOUT=%s", d.cfg.ShutdownTimeout)
	}
	if err != nil {
		return err
	}
	d.log.Info("gnld: stopped", "run_id", d.runID)
	return nil
}

// work scores camera c's frames until its capture closes Frames: every
// frame, or in trigger mode the first frame after each trigger. A frame
// the pipeline refuses is counted and skipped; any other pipeline error
// is fatal (the interpreter is broken) and stops gnld. It beats
// (health.go) after each frame and, while no frame comes, every
// liveWindow/2.
func (d *daemon) work(c *camera) error {
	defer c.done.Store(true)
	if c.trig != nil {
		return d.workTriggered(c)
	}
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
			_, err := d.process(c, f, nil)
			f.Close()
			if err != nil {
				return err
			}
		case <-tick.C:
		}
		d.beat(c)
	}
}

// idle waits for ctx once every worker has finished (GNLD_EXIT_WHEN_DONE
// false). With no inference left to vouch for it, it sends the
// keep-alives itself.
func (d *daemon) idle(ctx context.Context) {
	d.notify.Status("every source has ended; waiting for a signal")
	w := d.notify.WatchdogSec()
	if w == 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(w / 2)
	defer t.Stop()
	for {
		d.notify.Watchdog()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// takeNext puts a scorer made by reload into service, between two
// frames: f is the first frame the new model scores.
func (d *daemon) takeNext(c *camera, f capture.Frame) *scorer {
	s := c.serving.Load()
	next := c.next.Swap(nil)
	if next == nil {
		return s
	}
	t0 := time.Now()
	c.serving.Store(next)
	s.close()
	c.swaps.Add(1)
	if d.page != nil {
		d.page.SetModel(web.Model(next.model))
	}
	d.log.Info("model: camera switched", "camera", c.name, "from", s.model.Version, "to", next.model.Version,
		"threshold", next.pipe.Threshold(), "threshold_source", next.thresholdSource, "first_seq", f.Seq,
		"pause_ms", ms(time.Since(t0)))
	return next
}

// process scores frame f with the camera's model and publishes the
// result; t is the trigger it answers, or nil. It reports whether f was
// scored: false for a frame the pipeline refused.
func (d *daemon) process(c *camera, f capture.Frame, t *trigger) (bool, error) {
	s := d.takeNext(c, f)
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
		Model: s.model, Score: res.Score, Threshold: res.Threshold, ThresholdSource: s.thresholdSource,
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
	d.observe(c, s, f, res)
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

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// metricsCameras and metricsPublisher feed /metrics from the counters
// that capture, the workers and the publisher keep.
func (d *daemon) metricsCameras() map[string]metrics.CameraStats {
	out := make(map[string]metrics.CameraStats, len(d.cams))
	for _, c := range d.cams {
		s := c.cap.Stats()
		out[c.name] = metrics.CameraStats{
			Captured: s.Frames, Dropped: s.Dropped, Bad: s.Bad, Reconnects: s.Reconnects, Stalls: s.Stalls, SizeChanges: s.SizeChanges,
			Scored: c.processed.Load(), Anomalous: c.anomalous.Load(), Skipped: c.skipped.Load(),
		}
	}
	return out
}

func (d *daemon) metricsPublisher() metrics.PublisherStats {
	s := d.pub.Stats()
	return metrics.PublisherStats{
		Connected: s.Connected, Published: s.Published, Spooled: s.Spooled, Replayed: s.Replayed,
		SpoolLen: s.SpoolLen, SpoolDropped: s.SpoolDropped, MapsSkipped: s.MapsSkipped, Disconnects: s.Disconnects,
		Unacked: s.Unacked, SpoolWriteFailed: s.SpoolWriteFailed,
	}
}
