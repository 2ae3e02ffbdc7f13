package main

import (
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
	"gnld/evidence"
	"gnld/internal/auth"
	"gnld/internal/httpserver"
	"gnld/internal/metrics"
	"gnld/internal/registry"
	"gnld/internal/sdnotify"
	"gnld/models"
	"gnld/pipeline"
	"gnld/publish"
	"gnld/runtime"
	"gnld/sparkplug"
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
	spark   *sparkplug.Node    // nil: GNLD_SPARKPLUG=off (sparkplug.go)
	http    *httpserver.Server // nil: GNLD_HTTP_ADDR is off
	notify  *sdnotify.Notifier
	metrics *metrics.Metrics
	page    *web.Hub     // nil: GNLD_HTTP_ADDR is off
	state   atomic.Int32 // stateStarting, stateRunning, stateStopping
	epoch   time.Time    // when newDaemon began: the origin of clock()
	// busy: workers may still be inside a pipeline (a shutdown that timed
	// out), so close must not free the pipelines under them.
	busy bool

	reg      *registry.Registry            // the bundles loaded: cameras', products'
	bundle   atomic.Pointer[models.Bundle] // the first camera's bundle loaded last (log, page, stats)
	reloadMu sync.Mutex                    // one reload or changeover at a time; guards refusedFP
	// refusedFP: folder -> registry.Fingerprint when a reload last refused it
	refusedFP map[string]string
	// reloaded and refused count reloads put into service and refused;
	// refusal is the last refusal's error (stats topic).
	reloaded, refused atomic.Uint64
	refusal           atomic.Pointer[string]

	evidence *evidence.Store // nil: GNLD_EVIDENCE_DIR is off (review.go)
	auth     *auth.Auth      // nil: GNLD_HTTP_USERS is off (http.go)
}

// modelStats is the "model" part of the stats topic: the first camera's
// bundle loaded last (each camera's own is in its part) and the reloads
// since start.
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

// newDaemon loads the bundle and makes every part, so that a bad bundle,
// calibration, camera or spool stops start-up before any frame is read.
func newDaemon(cfg *Config, log *slog.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log, runID: newRunID(), notify: sdnotify.New(log), epoch: time.Now(),
		refusedFP: map[string]string{}}
	d.reg = registry.New(runtime.Options{Threads: cfg.Threads, Delegate: cfg.Delegate}, func(cameras int) int {
		return pipeline.Interpreters(cfg.Interpreters, cameras, cfg.Threads)
	}, cfg.pubkeys)
	ws := make([]want, len(cfg.cameras))
	for i, cc := range cfg.cameras {
		ws[i].base, _ = cfg.modelDir(cc)
		ws[i].dir = d.taughtOr(cc.name, ws[i].base)
	}
	set, _, err := d.loadScorers(ws)
	if err != nil {
		d.reg.Close()
		return nil, err
	}
	d.bundle.Store(d.reg.Loaded(ws[0].dir).Bundle)
	d.metrics = metrics.New(metrics.Sources{Cameras: d.metricsCameras, Publisher: d.metricsPublisher,
		Model: func() metrics.ModelStats {
			return metrics.ModelStats{Reloads: d.reloaded.Load(), Refused: d.refused.Load()}
		},
		Evidence: d.metricsEvidence, Sparkplug: d.metricsSparkplug})
	for i, cc := range cfg.cameras {
		c := &camera{d: d, name: cc.name, cfg: cc, metrics: d.metrics.Camera(cc.name)}
		c.beat.Store(d.clock()) // starting is not being stuck
		c.lastFrame.Store(d.clock())
		c.serving.Store(set[i])
		c.score.set(math.NaN())
		d.cams = append(d.cams, c)
	}
	d.setModelMetrics()
	d.preloadProducts()
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
	if d.spark, err = d.newSparkplug(); err != nil {
		d.close()
		return nil, err
	}
	for i, c := range d.cams {
		if cfg.cameras[i].Trigger == "mqtt" {
			c.trig = newTriggerQueue(c.name, cfg.TriggerQueue, log)
			d.pub.Subscribe(d.pub.Topic(c.name, "trigger"), c.trig.receive)
		}
		if cfg.ModelRoot != "" {
			d.pub.Subscribe(d.pub.Topic(c.name, "product"), d.productHandler(c))
		}
	}
	if cfg.EvidenceDir != "" {
		if d.evidence, err = evidence.Open(evidence.Config{Dir: cfg.EvidenceDir, MaxBytes: int64(cfg.EvidenceMaxMB) << 20,
			MaxAge: cfg.EvidenceMaxAge, NormalEvery: cfg.EvidenceNormalEvery}, log); err != nil {
			d.close()
			return nil, fmt.Errorf("GNLD_EVIDENCE_DIR=%s: %w", cfg.EvidenceDir, err)
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
	if d.evidence != nil {
		d.evidence.Close()
	}
	if d.busy {
		return // the process is about to exit anyway
	}
	for _, c := range d.cams {
		c.closeChanges()
		c.serving.Swap(nil).close()
		c.next.Swap(nil).close()
	}
	if d.reg != nil {
		d.reg.Close()
	}
}

// setModelMetrics names the models in service in /metrics: each
// camera's, and each distinct one in gnld_model_info.
func (d *daemon) setModelMetrics() {
	var all []metrics.ModelInfo
	for _, c := range d.cams {
		if s := c.serving.Load(); s != nil {
			m := metrics.ModelInfo{Name: s.model.Name, Version: s.model.Version, SHA256: s.model.SHA256}
			d.metrics.SetCameraModel(c.name, m, s.product)
			all = append(all, m)
		}
	}
	d.metrics.SetModels(all)
}

func (d *daemon) cameraStats() any {
	out := map[string]cameraStats{}
	for _, c := range d.cams {
		out[c.name] = c.stats()
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
	d.spark.Start()

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
		g.Go(func() error { return c.run() })
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
	if d.evidence != nil {
		d.evidence.Close() // writes what the workers queued
	}
	d.pub.Close()
	d.spark.Stop(deadline) // while the publisher finishes
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

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// metricsCameras and metricsPublisher feed /metrics from the counters
// that capture, the workers and the publisher keep.
func (d *daemon) metricsCameras() map[string]metrics.CameraStats {
	out := make(map[string]metrics.CameraStats, len(d.cams))
	for _, c := range d.cams {
		s := c.stats() // what the stats topic says
		m := metrics.CameraStats{
			Captured: s.Frames, Dropped: s.Dropped, Bad: s.Bad, Reconnects: s.Reconnects, Stalls: s.Stalls, SizeChanges: s.SizeChanges,
			Scored: s.Processed, Anomalous: s.Anomalous, Skipped: s.Skipped, Refused: s.Refused, Untriggered: s.Untriggered,
		}
		if t := s.Trigger; t != nil {
			m.Trigger = &metrics.TriggerStats{Received: t.Received, Answered: t.Answered, Overflow: t.Overflow, Malformed: t.Malformed,
				Unanswered: t.Unanswered, NoFrame: t.NoFrame, NotScored: t.NotScored, Waiting: t.Waiting}
		}
		if o := s.Changeover; o != nil {
			m.Changeover = &metrics.ChangeoverStats{Done: o.Done, Refused: o.Refused, BadMessages: o.BadMessages, Unscored: o.Unscored}
		}
		out[c.name] = m
	}
	return out
}

func (d *daemon) metricsEvidence() *metrics.EvidenceStats {
	if d.evidence == nil {
		return nil
	}
	s := d.evidence.Stats()
	return &metrics.EvidenceStats{Kept: s.Kept, Dropped: s.Dropped, Rejected: s.Rejected, Removed: s.Removed,
		WriteErrors: s.WriteErrors, Queued: s.Queued, Records: s.Records, Bytes: s.Bytes}
}

func (d *daemon) metricsSparkplug() *metrics.SparkplugStats {
	if d.spark == nil {
		return nil
	}
	s := d.spark.Stats()
	return &metrics.SparkplugStats{Connected: s.Connected, Sent: s.Sent, NotSent: s.NotSent, Dropped: s.Dropped,
		Births: s.Births, Rebirths: s.Rebirths}
}

func (d *daemon) metricsPublisher() metrics.PublisherStats {
	s := d.pub.Stats()
	return metrics.PublisherStats{
		Connected: s.Connected, Published: s.Published, Spooled: s.Spooled, Replayed: s.Replayed,
		SpoolLen: s.SpoolLen, SpoolDropped: s.SpoolDropped, MapsSkipped: s.MapsSkipped, Disconnects: s.Disconnects,
		Unacked: s.Unacked, SpoolWriteFailed: s.SpoolWriteFailed,
	}
}
