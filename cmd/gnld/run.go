package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"gnld/capture"
	"gnld/internal/httpserver"
	"gnld/internal/metrics"
	"gnld/internal/sdnotify"
	"gnld/models"
	"gnld/pipeline"
	"gnld/publish"
	"gnld/runtime"
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
	return d.run(ctx)
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon holds what run starts: one camera, pipeline and counters per
// camera, and one publisher.
type daemon struct {
	cfg     *Config
	log     *slog.Logger
	bundle  *models.Bundle
	runID   string
	cams    []*camera
	pub     *publish.Publisher
	http    *httpserver.Server // nil: GNLD_HTTP_ADDR is off
	notify  *sdnotify.Notifier
	metrics *metrics.Metrics
	state   atomic.Int32 // stateStarting, stateRunning, stateStopping
	// busy: workers may still be inside a pipeline (a shutdown that timed
	// out), so close must not free the pipelines under them.
	busy bool
}

// camera is one camera's capture, its pipeline (used only by its worker
// goroutine) and its counters (read by the stats timer, /metrics, STATUS).
type camera struct {
	cap     *capture.Camera
	pipe    *pipeline.Pipeline
	metrics *metrics.Camera

	processed, anomalous, skipped atomic.Uint64

	beat          atomic.Int64 // UnixNano of the worker's last beat (health.go)
	lastFrame     atomic.Int64 // UnixNano at which the worker last got a frame
	done          atomic.Bool  // the worker has returned
	score         lastScore    // last score, for STATUS
	lastAnomalous atomic.Bool
}

// cameraStats is one camera's part of the stats topic.
type cameraStats struct {
	capture.Stats
	Processed uint64 `json:"processed"`
	Anomalous uint64 `json:"anomalous"`
	Skipped   uint64 `json:"skipped"` // frames the pipeline refused
}

// newDaemon loads the bundle and makes every part, so that a bad bundle,
// camera or spool stops start-up before any frame is read.
func newDaemon(cfg *Config, log *slog.Logger) (*daemon, error) {
	b, err := models.Load(cfg.ModelDir)
	if err != nil {
		return nil, fmt.Errorf("model bundle (GNLD_MODEL_DIR=%s): %w", cfg.ModelDir, err)
	}
	d := &daemon{cfg: cfg, log: log, bundle: b, runID: time.Now().UTC().Format("20060102T150405.000000Z"), notify: sdnotify.New(log)}
	d.metrics = metrics.New(metrics.Sources{Cameras: d.metricsCameras, Publisher: d.metricsPublisher})
	d.metrics.SetModel(b.Meta.Name, b.Meta.Version, b.Meta.ModelSHA256)
	for i, cc := range cfg.cameras {
		c, err := capture.New(cfg.captureConfig(i), log)
		if err != nil {
			d.close()
			return nil, err
		}
		p, err := pipeline.New(b, runtime.Options{Threads: cfg.Threads, Delegate: cfg.Delegate})
		if err != nil {
			d.close()
			return nil, fmt.Errorf("model %s: %w", b.ModelPath, err)
		}
		if cc.Threshold != nil {
			p.SetThreshold(float32(*cc.Threshold))
		}
		cam := &camera{cap: c, pipe: p, metrics: d.metrics.Camera(cc.name)}
		cam.score.set(math.NaN())
		d.cams = append(d.cams, cam)
	}
	pc := cfg.publishConfig()
	pc.StatsExtra = d.cameraStats
	if d.pub, err = publish.New(pc, log); err != nil {
		d.close()
		return nil, err
	}
	if err := d.listenHTTP(); err != nil {
		d.close()
		return nil, fmt.Errorf("GNLD_HTTP_ADDR=%s: %w", d.cfg.HTTPAddr, err)
	}
	return d, nil
}

func (d *daemon) close() {
	if d.http != nil {
		d.http.Close()
	}
	if d.busy {
		return // the process is about to exit anyway
	}
	for _, c := range d.cams {
		c.pipe.Close()
	}
}

func (d *daemon) cameraStats() any {
	out := map[string]cameraStats{}
	for _, c := range d.cams {
		out[c.cap.Name()] = cameraStats{
			Stats: c.cap.Stats(), Processed: c.processed.Load(),
			Anomalous: c.anomalous.Load(), Skipped: c.skipped.Load(),
		}
	}
	return out
}

func (d *daemon) run(ctx context.Context) error {
	m := d.bundle.Meta
	names := make([]string, len(d.cams))
	for i, c := range d.cams {
		names[i] = c.cap.Name() + "=" + d.cfg.cameras[i].spec.String()
	}
	d.log.Info("gnld: starting", "run_id", d.runID, "model", m.Name, "version", m.Version,
		"cameras", strings.Join(names, ","), "broker", d.cfg.MQTTBroker, "site", d.cfg.Site, "device", d.cfg.Device)
	d.serveHTTP()
	defer d.stopHTTP()
	stopReloads := d.handleReloads()
	defer stopReloads()
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
		now := time.Now().UnixNano()
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
	d.state.Store(stateStopping)
	d.notify.Stopping("stopping: finishing frames in flight, publishing the spool")
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

// work scores camera c's frames until its capture closes Frames. A frame
// the pipeline refuses is counted and skipped; any other pipeline error is
// fatal (the interpreter is broken) and stops gnld. It beats (health.go)
// after each frame and, while no frame comes, every liveWindow/2.
func (d *daemon) work(c *camera) error {
	defer c.done.Store(true)
	tick := time.NewTicker(d.liveWindow() / 2)
	defer tick.Stop()
	for {
		select {
		case f, ok := <-c.cap.Frames():
			if !ok {
				return nil
			}
			c.lastFrame.Store(time.Now().UnixNano())
			if testStall != nil {
				testStall(f.Camera)
			}
			err := d.process(c, f)
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

func (d *daemon) process(c *camera, f capture.Frame) error {
	res, err := c.pipe.Process(f.Mat)
	if errors.Is(err, pipeline.ErrFrame) {
		c.skipped.Add(1)
		d.log.Warn("frame skipped", "camera", f.Camera, "seq", f.Seq, "file", f.File, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("camera %s frame %d: %w", f.Camera, f.Seq, err)
	}
	c.processed.Add(1)
	if res.Anomalous {
		c.anomalous.Add(1)
	}
	total := time.Since(f.Time)
	c.metrics.Observe(float64(res.Score), float64(res.Threshold), res.Timings.Normalize, res.Timings.Invoke, res.Timings.Post, total)
	c.score.set(float64(res.Score))
	c.lastAnomalous.Store(res.Anomalous)
	m := d.bundle.Meta
	r := publish.Result{
		RunID: d.runID, Timestamp: f.Time.UTC(), Sequence: f.Seq, Camera: f.Camera, File: f.File,
		Model: publish.Model{Name: m.Name, Version: m.Version, SHA256: m.ModelSHA256},
		Score: res.Score, Threshold: res.Threshold, Verdict: publish.Verdict(res.Anomalous),
		LatencyMS: publish.Latency{
			Normalize: ms(res.Timings.Normalize), Invoke: ms(res.Timings.Invoke), Post: ms(res.Timings.Post),
			Total: ms(total),
		},
	}
	d.log.Debug("frame", "camera", r.Camera, "seq", r.Sequence, "file", r.File, "score", r.Score,
		"threshold", r.Threshold, "verdict", r.Verdict, "normalize_ms", r.LatencyMS.Normalize,
		"invoke_ms", r.LatencyMS.Invoke, "post_ms", r.LatencyMS.Post, "total_ms", r.LatencyMS.Total)
	if err := d.pub.Result(r); err != nil {
		return err
	}
	switch d.cfg.Map {
	case "png":
		png, err := c.pipe.Heatmap(f.Mat, res)
		if err != nil {
			d.log.Warn("heatmap failed", "camera", f.Camera, "seq", f.Seq, "err", err)
			return nil
		}
		d.pub.Map(f.Camera, png)
	case "raw":
		d.pub.Map(f.Camera, bytes.Clone(c.pipe.RawMap8(res))) // RawMap8 reuses its buffer
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// metricsCameras and metricsPublisher feed /metrics from the counters
// that capture, the workers and the publisher keep.
func (d *daemon) metricsCameras() map[string]metrics.CameraStats {
	out := make(map[string]metrics.CameraStats, len(d.cams))
	for _, c := range d.cams {
		s := c.cap.Stats()
		out[c.cap.Name()] = metrics.CameraStats{
			Captured: s.Frames, Dropped: s.Dropped, Bad: s.Bad, Reconnects: s.Reconnects, Stalls: s.Stalls,
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
	}
}
