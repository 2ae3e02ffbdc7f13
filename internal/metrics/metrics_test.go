package metrics

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape fetches url over real HTTP and parses it with Prometheus's text
// parser.
func Scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return mf
}

// value returns the value of the series of family name whose labels
// include want, and whether it was found.
func value(mf map[string]*dto.MetricFamily, name string, want map[string]string) (*dto.Metric, bool) {
	f := mf[name]
	if f == nil {
		return nil, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m, true
	}
	return nil, false
}

func TestScrape(t *testing.T) {
	var dropped atomic.Uint64
	dropped.Store(7)
	m := New(Sources{
		Cameras: func() map[string]CameraStats {
			return map[string]CameraStats{
				"line1": {Captured: 10, Dropped: dropped.Load(), Scored: 3, Anomalous: 1, Skipped: 2, Reconnects: 4},
				"gige": {Refused: 2, Untriggered: 1,
					Trigger:    &TriggerStats{Received: 12, Answered: 11, Overflow: 3, Malformed: 4, NoFrame: 2, NotScored: 5, Waiting: 1},
					Changeover: &ChangeoverStats{Done: 6, Refused: 1, BadMessages: 2, Unscored: 8}},
			}
		},
		Publisher: func() PublisherStats { return PublisherStats{Connected: true, SpoolLen: 5, Published: 9} },
		Evidence:  func() *EvidenceStats { return &EvidenceStats{Kept: 20, Removed: 3, Records: 17, Bytes: 4096} },
		Sparkplug: func() *SparkplugStats { return nil }, // off
	})
	m.SetModels([]ModelInfo{{"old", "1", "aa"}})
	m.SetModels([]ModelInfo{{"gnl", "2", "bb"}}) // a swap replaces the info series
	cam := m.Camera("line1")
	m.Camera("line2") // exists before any frame
	cam.Observe(1.0, 2.0, time.Millisecond, 150*time.Millisecond, 2*time.Millisecond, 200*time.Millisecond)
	cam.Observe(3.0, 2.0, time.Millisecond, 100*time.Millisecond, 2*time.Millisecond, 150*time.Millisecond)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	mf := Scrape(t, srv.URL)

	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"gnld_frames_captured_total", map[string]string{"camera": "line1"}, 10},
		{"gnld_frames_dropped_total", map[string]string{"camera": "line1"}, 7},
		{"gnld_frames_skipped_total", map[string]string{"camera": "line1"}, 2},
		{"gnld_frames_scored_total", map[string]string{"camera": "line1"}, 3},
		{"gnld_anomalies_total", map[string]string{"camera": "line1"}, 1},
		{"gnld_source_reconnects_total", map[string]string{"camera": "line1"}, 4},
		{"gnld_mqtt_connected", nil, 1},
		{"gnld_spool_length", nil, 5},
		{"gnld_results_published_total", nil, 9},
		{"gnld_score", map[string]string{"camera": "line1"}, 3},
		{"gnld_threshold", map[string]string{"camera": "line1"}, 2},
		{"gnld_model_info", map[string]string{"name": "gnl", "version": "2", "sha256": "bb"}, 1},
		{"gnld_source_refused_total", map[string]string{"camera": "gige"}, 2},
		{"gnld_frames_untriggered_total", map[string]string{"camera": "gige"}, 1},
		{"gnld_triggers_received_total", map[string]string{"camera": "gige"}, 12},
		{"gnld_triggers_answered_total", map[string]string{"camera": "gige"}, 11},
		{"gnld_triggers_refused_total", map[string]string{"camera": "gige", "reason": "queue_full"}, 3},
		{"gnld_triggers_refused_total", map[string]string{"camera": "gige", "reason": "malformed"}, 4},
		{"gnld_triggers_no_frame_total", map[string]string{"camera": "gige"}, 2},
		{"gnld_trigger_queue_length", map[string]string{"camera": "gige"}, 1},
		{"gnld_frames_not_scored_total", map[string]string{"camera": "gige", "reason": "no_trigger"}, 5},
		{"gnld_frames_not_scored_total", map[string]string{"camera": "gige", "reason": "product_refused"}, 8},
		{"gnld_changeovers_total", map[string]string{"camera": "gige", "result": "done"}, 6},
		{"gnld_changeovers_total", map[string]string{"camera": "gige", "result": "refused"}, 1},
		{"gnld_product_messages_bad_total", map[string]string{"camera": "gige"}, 2},
		{"gnld_evidence_kept_total", nil, 20},
		{"gnld_evidence_removed_total", nil, 3},
		{"gnld_evidence_records", nil, 17},
		{"gnld_evidence_bytes", nil, 4096},
	} {
		s, ok := value(mf, tc.name, tc.labels)
		if !ok {
			t.Errorf("%s%v missing", tc.name, tc.labels)
			continue
		}
		var got float64
		switch {
		case s.Counter != nil:
			got = s.Counter.GetValue()
		case s.Gauge != nil:
			got = s.Gauge.GetValue()
		}
		if got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// A camera not in trigger mode, and a part that is off, have no series.
	if _, ok := value(mf, "gnld_triggers_received_total", map[string]string{"camera": "line1"}); ok {
		t.Error("trigger series for line1, which is not in trigger mode")
	}
	if _, ok := mf["gnld_sparkplug_connected"]; ok {
		t.Error("Sparkplug series while Sparkplug is off")
	}
	if n := len(mf["gnld_model_info"].Metric); n != 1 {
		t.Errorf("gnld_model_info has %d series after a swap, want 1", n)
	}
	inv, ok := value(mf, "gnld_stage_duration_seconds", map[string]string{"camera": "line1", "stage": "invoke"})
	if !ok || inv.Histogram.GetSampleCount() != 2 || inv.Histogram.GetSampleSum() != 0.25 {
		t.Errorf("invoke histogram: %v", inv)
	}
	r, _ := value(mf, "gnld_score_ratio", map[string]string{"camera": "line1"})
	for _, b := range r.GetHistogram().GetBucket() {
		// 0.5 and 1.5: one at or below 1, two at or below 1.5.
		if (b.GetUpperBound() == 1 && b.GetCumulativeCount() != 1) || (b.GetUpperBound() == 1.5 && b.GetCumulativeCount() != 2) {
			t.Errorf("score ratio bucket le=%v holds %d", b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
	if s, ok := value(mf, "gnld_stage_duration_seconds", map[string]string{"camera": "line2", "stage": "total"}); !ok || s.Histogram.GetSampleCount() != 0 {
		t.Errorf("line2 histogram should exist, empty: %v", s)
	}
	if _, ok := mf["process_resident_memory_bytes"]; !ok {
		t.Error("no process metrics")
	}
	// Read at scrape time: a later change shows in the next scrape.
	dropped.Store(8)
	if s, _ := value(Scrape(t, srv.URL), "gnld_frames_dropped_total", map[string]string{"camera": "line1"}); s.GetCounter().GetValue() != 8 {
		t.Errorf("dropped not re-read at scrape: %v", s)
	}
}
