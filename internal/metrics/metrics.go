// Package metrics is gnld's Prometheus metrics, on a registry of its own
// (never the global one), served by Handler on GNLD_HTTP_ADDR/metrics.
//
// Two kinds of metrics:
//
//   - Observed per frame: the daemon's worker calls Camera.Observe after
//     each scored frame (stage latencies, score, verdict). Camera handles
//     are safe for concurrent use; each worker holds its own.
//   - Read at scrape time: counters that capture, triggers, changeovers,
//     the evidence store, Sparkplug B and publish already keep (frames,
//     drops, bad frames, reconnects, spool, MQTT state...) are read
//     through the functions in Sources, so that the stats topic and
//     /metrics can never disagree.
//
// SetModel names the model in force (gnld_model_info); call it again after
// a model swap.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// CameraStats are one camera's counters, read at each scrape.
type CameraStats struct {
	Captured   uint64 // frames capture handed to the pipeline
	Dropped    uint64 // live frames replaced by a newer one before the pipeline took them
	Bad        uint64 // frames capture refused (empty, not 8-bit colour, ROI outside)
	Reconnects uint64 // source connections that failed or ended unexpectedly
	Stalls     uint64 // of those, connections the capture watchdog abandoned
	Scored     uint64 // frames the model scored
	Anomalous  uint64 // of those, anomalous
	Skipped    uint64 // frames the pipeline refused
	// SizeChanges: times a camera's frames changed size (the new size is
	// used from then on).
	SizeChanges uint64
	// Refused: connections to a genicam camera that failed because the
	// camera does not take one of its settings. Untriggered: frames a
	// software-triggered camera sent without a trigger (discarded).
	Refused, Untriggered uint64
	Trigger              *TriggerStats    // nil: the camera is not in trigger mode
	Changeover           *ChangeoverStats // nil: GNLD_MODEL_ROOT is off
}

// TriggerStats are a trigger-mode camera's trigger counters.
type TriggerStats struct {
	Received, Answered uint64
	Overflow           uint64 // refused: the queue was full
	Malformed          uint64 // refused: payload not understood, or retained
	Unanswered         uint64 // accepted, but the camera stopped first
	NoFrame            uint64 // answered not_scored: the camera gave no frame
	NotScored          uint64 // frames captured with no trigger waiting
	Waiting            int    // in the queue now
}

// ChangeoverStats are a camera's product changeovers (GNLD_MODEL_ROOT).
type ChangeoverStats struct {
	Done, Refused uint64
	BadMessages   uint64 // product messages that could not be read
	Unscored      uint64 // frames published as not_scored while a product was refused
}

// EvidenceStats are the evidence store's counters (GNLD_EVIDENCE_DIR).
type EvidenceStats struct {
	Kept, Dropped, Rejected, Removed, WriteErrors uint64
	Queued, Records                               int
	Bytes                                         int64
}

// SparkplugStats are the Sparkplug B edge node's counters (GNLD_SPARKPLUG).
type SparkplugStats struct {
	Connected                                bool
	Sent, NotSent, Dropped, Births, Rebirths uint64
}

// PublisherStats are the MQTT publisher's counters, read at each scrape.
type PublisherStats struct {
	Connected    bool
	Published    uint64
	Spooled      uint64
	Replayed     uint64
	SpoolLen     int
	SpoolDropped uint64
	MapsSkipped  uint64
	Disconnects  uint64
	// Unacked: publishes the broker did not acknowledge within
	// GNLD_MQTT_TIMEOUT (the result went to the spool).
	Unacked uint64
	// SpoolWriteFailed: results lost because the spool could not be
	// written (disk full, read-only); part of SpoolDropped.
	SpoolWriteFailed uint64
}

// ModelStats count model reloads (SIGHUP, GNLD_MODEL_WATCH).
type ModelStats struct {
	Reloads uint64 // bundles loaded and put into service
	Refused uint64 // bundles refused; the model in service stayed
}

// Sources are read at each scrape; both must be goroutine-safe.
type Sources struct {
	Cameras   func() map[string]CameraStats
	Publisher func() PublisherStats
	Model     func() ModelStats
	// Evidence and Sparkplug return nil while the part is off; their
	// series are then absent.
	Evidence  func() *EvidenceStats
	Sparkplug func() *SparkplugStats
}

// Stages are the stage label values of gnld_stage_duration_seconds.
var Stages = []string{"normalize", "invoke", "post", "total"}

// Metrics holds the registry and the per-frame metrics.
type Metrics struct {
	reg    *prometheus.Registry
	stage  *prometheus.HistogramVec
	ratio  *prometheus.HistogramVec
	score  *prometheus.GaugeVec
	thresh *prometheus.GaugeVec
	last   *prometheus.GaugeVec

	mu       sync.Mutex // serialises SetModel, SetModels, SetCameraModel
	model    *prometheus.GaugeVec
	camModel *prometheus.GaugeVec
}

// ModelInfo names a model bundle: model.json's name and version, and the
// SHA-256 of model.tflite.
type ModelInfo struct{ Name, Version, SHA256 string }

// New makes the registry with gnld's metrics, the Go runtime's and the
// process's (RSS, CPU, open files).
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		stage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gnld_stage_duration_seconds",
			Help: "Time per frame in each stage: normalize, invoke (the model), post (map and score), total (capture to result).",
			// 0.5 ms .. 4 s
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"camera", "stage"}),
		ratio: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gnld_score_ratio",
			Help:    "Anomaly score divided by the threshold in force: 1 is the threshold, >= 1 is anomalous. Model-independent, so buckets survive a model swap.",
			Buckets: []float64{0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5},
		}, []string{"camera"}),
		score: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gnld_score", Help: "Anomaly score of the camera's last scored frame.",
		}, []string{"camera"}),
		thresh: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gnld_threshold", Help: "Anomaly threshold the camera's last frame was compared with.",
		}, []string{"camera"}),
		last: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gnld_last_result_timestamp_seconds", Help: "Unix time at which the camera's last result was made.",
		}, []string{"camera"}),
		model: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gnld_model_info", Help: "The model bundle in force (value 1): name, version and SHA-256 of model.tflite.",
		}, []string{"name", "version", "sha256"}),
		camModel: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gnld_camera_model_info",
			Help: "The model bundle each camera scores with (value 1), and the product it serves (GNLD_MODEL_ROOT; empty: the camera's own model).",
		}, []string{"camera", "name", "version", "sha256", "product"}),
	}
	m.reg.MustRegister(m.stage, m.ratio, m.score, m.thresh, m.last, m.model, m.camModel, newCollector(src),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry, for features that add metrics of their own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// SetModels replaces gnld_model_info with the models in force, one series
// per distinct model (cameras with models of their own, or products).
func (m *Metrics) SetModels(all []ModelInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.model.Reset()
	for _, x := range all {
		m.model.WithLabelValues(x.Name, x.Version, x.SHA256).Set(1)
	}
}

// SetCameraModel replaces camera's gnld_camera_model_info.
func (m *Metrics) SetCameraModel(camera string, x ModelInfo, product string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.camModel.DeletePartialMatch(prometheus.Labels{"camera": camera})
	m.camModel.WithLabelValues(camera, x.Name, x.Version, x.SHA256, product).Set(1)
}

// Camera is one camera's per-frame metrics.
type Camera struct {
	stage               [4]prometheus.Observer // in the order of Stages
	ratio               prometheus.Observer
	score, thresh, last prometheus.Gauge
}

// Camera returns the handle for camera name; its series exist (at 0) from
// now on, before the first frame.
func (m *Metrics) Camera(name string) *Camera {
	c := &Camera{
		ratio: m.ratio.WithLabelValues(name), score: m.score.WithLabelValues(name),
		thresh: m.thresh.WithLabelValues(name), last: m.last.WithLabelValues(name),
	}
	for i, s := range Stages {
		c.stage[i] = m.stage.WithLabelValues(name, s)
	}
	return c
}

// Observe records one scored frame.
func (c *Camera) Observe(score, threshold float64, normalize, invoke, post, total time.Duration) {
	for i, d := range [4]time.Duration{normalize, invoke, post, total} {
		c.stage[i].Observe(d.Seconds())
	}
	if threshold > 0 {
		c.ratio.Observe(score / threshold)
	}
	c.score.Set(score)
	c.thresh.Set(threshold)
	c.last.Set(float64(time.Now().UnixNano()) / 1e9)
}

// collector reads the counters of capture, the pipeline and the publisher
// at scrape time.
type collector struct {
	src                                   Sources
	captured, dropped, bad, reconnects    *prometheus.Desc
	stalls, scored, anomalies, skipped    *prometheus.Desc
	connected, disconnects, published     *prometheus.Desc
	spooled, replayed, spoolLen, spoolDrp *prometheus.Desc
	mapsSkipped, unacked, spoolWriteFail  *prometheus.Desc
	sizeChanges, reloads                  *prometheus.Desc
	refused, untriggered                  *prometheus.Desc

	trigReceived, trigAnswered, trigRefused, trigUnanswered, trigNoFrame, trigQueue *prometheus.Desc
	notScored, changeovers, productBad                                              *prometheus.Desc

	evKept, evDropped, evRejected, evRemoved, evWriteErr, evQueue, evRecords, evBytes *prometheus.Desc
	spConnected, spSent, spNotSent, spDropped, spBirths, spRebirths                   *prometheus.Desc
}

func newCollector(src Sources) *collector {
	cam := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"camera"}, nil)
	}
	one := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &collector{
		src:         src,
		captured:    cam("gnld_frames_captured_total", "Frames the camera handed to the pipeline."),
		dropped:     cam("gnld_frames_dropped_total", "Live frames replaced by a newer one before the pipeline took them (model slower than the camera)."),
		bad:         cam("gnld_frames_bad_total", "Frames capture refused: empty, not 8-bit colour, ROI outside the frame."),
		skipped:     cam("gnld_frames_skipped_total", "Frames the pipeline refused."),
		scored:      cam("gnld_frames_scored_total", "Frames the model scored (one result each)."),
		anomalies:   cam("gnld_anomalies_total", "Scored frames with score >= threshold."),
		reconnects:  cam("gnld_source_reconnects_total", "Source connections that failed or ended unexpectedly and were reopened."),
		stalls:      cam("gnld_source_stalls_total", "Source connections abandoned by the capture watchdog (no frame for GNLD_READ_TIMEOUT)."),
		connected:   one("gnld_mqtt_connected", "1 while the MQTT connection is up, else 0."),
		disconnects: one("gnld_mqtt_disconnects_total", "MQTT connections lost."),
		published:   one("gnld_results_published_total", "Results the broker acknowledged (QoS 0: sent), replayed ones included."),
		spooled:     one("gnld_results_spooled_total", "Results written to the on-disk spool (broker away or slow)."),
		replayed:    one("gnld_results_replayed_total", "Spooled results published later."),
		spoolLen:    one("gnld_spool_length", "Results waiting in the spool now."),
		spoolDrp:    one("gnld_spool_dropped_total", "Results lost: spool full (oldest first) or not writable."),
		mapsSkipped: one("gnld_maps_skipped_total", "Anomaly maps not sent because the broker was away."),
		unacked:     one("gnld_mqtt_unacknowledged_total", "Publishes the broker did not acknowledge within GNLD_MQTT_TIMEOUT; the result went to the spool."),
		spoolWriteFail: one("gnld_spool_write_failures_total",
			"Results lost because the spool could not be written (disk full, read-only); also counted in gnld_spool_dropped_total."),
		sizeChanges: cam("gnld_frames_size_changes_total", "Times the camera's frame size changed; frames of the new size are scored."),
		reloads: prometheus.NewDesc("gnld_model_reloads_total",
			"Model reloads (SIGHUP, GNLD_MODEL_WATCH) by result: loaded (in service), refused (the model in service stayed).", []string{"result"}, nil),
		refused:     cam("gnld_source_refused_total", "Connections to a genicam camera that failed because the camera does not take one of its settings."),
		untriggered: cam("gnld_frames_untriggered_total", "Frames a software-triggered camera sent without a trigger; discarded."),

		trigReceived:   cam("gnld_triggers_received_total", "Trigger messages accepted into the camera's queue."),
		trigAnswered:   cam("gnld_triggers_answered_total", "Triggers answered with a result (scored, or not_scored with the reason)."),
		trigRefused:    prometheus.NewDesc("gnld_triggers_refused_total", "Trigger messages refused, by reason: queue_full, malformed.", []string{"camera", "reason"}, nil),
		trigUnanswered: cam("gnld_triggers_unanswered_total", "Triggers accepted but not answered because the camera stopped first."),
		trigNoFrame:    cam("gnld_triggers_no_frame_total", "Triggers of a software-triggered camera answered not_scored because the camera gave no frame."),
		trigQueue:      cam("gnld_trigger_queue_length", "Triggers waiting for a frame now."),
		notScored: prometheus.NewDesc("gnld_frames_not_scored_total",
			"Frames captured but not scored, by reason: no_trigger (trigger mode, no trigger waiting), product_refused (published as not_scored).", []string{"camera", "reason"}, nil),
		changeovers: prometheus.NewDesc("gnld_changeovers_total",
			"Product changeovers by result: done (the new product's model in service), refused (unknown product or a bundle that failed its checks).", []string{"camera", "result"}, nil),
		productBad: cam("gnld_product_messages_bad_total", "Product messages that could not be read."),

		evKept:     one("gnld_evidence_kept_total", "Results queued for the evidence store."),
		evDropped:  one("gnld_evidence_dropped_total", "Results not kept because the evidence writer's queue was full."),
		evRejected: one("gnld_evidence_rejected_total", "Results not kept: an unusable frame or map, or a record larger than the store."),
		evRemoved:  one("gnld_evidence_removed_total", "Evidence records removed to stay within GNLD_EVIDENCE_MAX_MB and GNLD_EVIDENCE_MAX_AGE."),
		evWriteErr: one("gnld_evidence_write_errors_total", "Evidence records not written: an encoding or file error (a full disk)."),
		evQueue:    one("gnld_evidence_queue_length", "Evidence records waiting for the writer now."),
		evRecords:  one("gnld_evidence_records", "Evidence records on disk."),
		evBytes:    one("gnld_evidence_bytes", "Size of the evidence store on disk."),

		spConnected: one("gnld_sparkplug_connected", "1 while the Sparkplug B session is up, else 0."),
		spSent:      one("gnld_sparkplug_ddata_sent_total", "Sparkplug B DDATA messages sent, one per result."),
		spNotSent:   one("gnld_sparkplug_not_sent_total", "Results with no DDATA: no session was up, or the publish failed (the JSON topics still carry them)."),
		spDropped:   one("gnld_sparkplug_dropped_total", "Results dropped because the Sparkplug B queue was full."),
		spBirths:    one("gnld_sparkplug_births_total", "NBIRTH messages sent (sessions and rebirths)."),
		spRebirths:  one("gnld_sparkplug_rebirths_total", "Rebirth requests (Node Control/Rebirth) answered."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.captured, c.dropped, c.bad, c.skipped, c.scored, c.anomalies, c.reconnects, c.stalls,
		c.connected, c.disconnects, c.published, c.spooled, c.replayed, c.spoolLen, c.spoolDrp, c.mapsSkipped,
		c.unacked, c.spoolWriteFail, c.sizeChanges, c.reloads, c.refused, c.untriggered,
		c.trigReceived, c.trigAnswered, c.trigRefused, c.trigUnanswered, c.trigNoFrame, c.trigQueue,
		c.notScored, c.changeovers, c.productBad,
		c.evKept, c.evDropped, c.evRejected, c.evRemoved, c.evWriteErr, c.evQueue, c.evRecords, c.evBytes,
		c.spConnected, c.spSent, c.spNotSent, c.spDropped, c.spBirths, c.spRebirths} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if c.src.Cameras != nil {
		for name, s := range c.src.Cameras() {
			counter(c.captured, s.Captured, name)
			counter(c.dropped, s.Dropped, name)
			counter(c.bad, s.Bad, name)
			counter(c.skipped, s.Skipped, name)
			counter(c.scored, s.Scored, name)
			counter(c.anomalies, s.Anomalous, name)
			counter(c.reconnects, s.Reconnects, name)
			counter(c.stalls, s.Stalls, name)
			counter(c.sizeChanges, s.SizeChanges, name)
			counter(c.refused, s.Refused, name)
			counter(c.untriggered, s.Untriggered, name)
			if t := s.Trigger; t != nil {
				counter(c.trigReceived, t.Received, name)
				counter(c.trigAnswered, t.Answered, name)
				counter(c.trigRefused, t.Overflow, name, "queue_full")
				counter(c.trigRefused, t.Malformed, name, "malformed")
				counter(c.trigUnanswered, t.Unanswered, name)
				counter(c.trigNoFrame, t.NoFrame, name)
				gauge(c.trigQueue, float64(t.Waiting), name)
				counter(c.notScored, t.NotScored, name, "no_trigger")
			}
			if o := s.Changeover; o != nil {
				counter(c.changeovers, o.Done, name, "done")
				counter(c.changeovers, o.Refused, name, "refused")
				counter(c.productBad, o.BadMessages, name)
				counter(c.notScored, o.Unscored, name, "product_refused")
			}
		}
	}
	if c.src.Publisher != nil {
		p := c.src.Publisher()
		up := 0.0
		if p.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, up)
		counter(c.disconnects, p.Disconnects)
		counter(c.published, p.Published)
		counter(c.spooled, p.Spooled)
		counter(c.replayed, p.Replayed)
		ch <- prometheus.MustNewConstMetric(c.spoolLen, prometheus.GaugeValue, float64(p.SpoolLen))
		counter(c.spoolDrp, p.SpoolDropped)
		counter(c.mapsSkipped, p.MapsSkipped)
		counter(c.unacked, p.Unacked)
		counter(c.spoolWriteFail, p.SpoolWriteFailed)
	}
	if c.src.Model != nil {
		m := c.src.Model()
		counter(c.reloads, m.Reloads, "loaded")
		counter(c.reloads, m.Refused, "refused")
	}
	if c.src.Evidence != nil {
		if e := c.src.Evidence(); e != nil {
			counter(c.evKept, e.Kept)
			counter(c.evDropped, e.Dropped)
			counter(c.evRejected, e.Rejected)
			counter(c.evRemoved, e.Removed)
			counter(c.evWriteErr, e.WriteErrors)
			gauge(c.evQueue, float64(e.Queued))
			gauge(c.evRecords, float64(e.Records))
			gauge(c.evBytes, float64(e.Bytes))
		}
	}
	if c.src.Sparkplug != nil {
		if p := c.src.Sparkplug(); p != nil {
			up := 0.0
			if p.Connected {
				up = 1
			}
			gauge(c.spConnected, up)
			counter(c.spSent, p.Sent)
			counter(c.spNotSent, p.NotSent)
			counter(c.spDropped, p.Dropped)
			counter(c.spBirths, p.Births)
			counter(c.spRebirths, p.Rebirths)
		}
	}
}
