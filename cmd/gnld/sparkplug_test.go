package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gnld/internal/testbroker"
	"gnld/sparkplug"
)

// spbPython is the build root's venv with an independent Sparkplug B
// client (pysparkplug 0.6.1, paho-mqtt 1.6.1).
const spbPython = "/opt/spb-venv/bin/python"

// spbRecord is one line of testdata/spb_listen.py: a message as
// pysparkplug decoded it.
type spbRecord struct {
	Ready   bool        `json:"ready"`
	Sent    string      `json:"sent"`
	Error   string      `json:"error"`
	Topic   string      `json:"topic"`
	Type    string      `json:"type"`
	Device  string      `json:"device"`
	QoS     int         `json:"qos"`
	Retain  bool        `json:"retain"`
	Seq     *uint64     `json:"seq"`
	BdSeq   *uint64     `json:"bdSeq"`
	Metrics []spbMetric `json:"metrics"`
}

type spbMetric struct {
	Name     string          `json:"name"`
	Datatype string          `json:"datatype"`
	Value    json.RawMessage `json:"value"`
	IsNull   bool            `json:"is_null"`
}

func (r spbRecord) metric(name string) (spbMetric, bool) {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return spbMetric{}, false
}

// spbListener runs testdata/spb_listen.py and collects its lines.
type spbListener struct {
	stdin io.WriteCloser
	mu    sync.Mutex
	recs  []spbRecord
	bad   []string // lines that are not JSON
	done  chan struct{}
}

func startSpbListener(t *testing.T, port int) *spbListener {
	t.Helper()
	if _, err := os.Stat(spbPython); err != nil {
		t.Skipf("no Sparkplug B client venv at %s (tools/sidroot builds it)", spbPython)
	}
	cmd := exec.Command(spbPython, "testdata/spb_listen.py", "--port", strconv.Itoa(port),
		"--client-id", fmt.Sprintf("spb-listen-%d", port))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &spbListener{done: make(chan struct{})}
	if l.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r spbRecord
			l.mu.Lock()
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				l.bad = append(l.bad, sc.Text())
			} else {
				l.recs = append(l.recs, r)
			}
			l.mu.Unlock()
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		l.stdin.Close()
		select {
		case <-l.done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-l.done
		}
	})
	l.waitFor(t, 10*time.Second, "the listener's subscription", func(rs []spbRecord) bool { return len(rs) > 0 && rs[0].Ready })
	return l
}

func (l *spbListener) records() []spbRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]spbRecord(nil), l.recs...)
}

func (l *spbListener) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(l.stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

func (l *spbListener) waitFor(t *testing.T, timeout time.Duration, what string, ok func([]spbRecord) bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !ok(l.records()); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (%d lines)", timeout, what, len(l.records()))
		}
	}
}

// node returns the messages of edge node "dev" (not the listener's NCMDs,
// nor its own lines).
func nodeMessages(rs []spbRecord) []spbRecord {
	var out []spbRecord
	for _, r := range rs {
		if r.Type != "" && r.Type != "NCMD" {
			out = append(out, r)
		}
	}
	return out
}

func countType(rs []spbRecord, typ string) int {
	n := 0
	for _, r := range nodeMessages(rs) {
		if r.Type == typ {
			n++
		}
	}
	return n
}

func TestSparkplugConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_SPARKPLUG": "yes"}, `GNLD_SPARKPLUG="yes": expected off or on`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_SPARKPLUG_GROUP": "a/b"}, `GNLD_SPARKPLUG_GROUP="a/b": expected a name without / + #`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_SPARKPLUG_GRUOP": "g"}, "unknown environment variable GNLD_SPARKPLUG_GRUOP"},
	} {
		setEnv(t, tc.env)
		_, err := loadConfig()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("env %v:\n got %v\nwant %s", tc.env, err, tc.want)
		}
	}
}

// jsonResult is the part of a JSON result that DDATA carries, with the
// numbers as float64 (as a consumer of the JSON reads them).
type jsonResult struct {
	Sequence  uint64  `json:"sequence"`
	Score     float64 `json:"score"`
	Threshold float64 `json:"threshold"`
	Verdict   string  `json:"verdict"`
	Drift     string  `json:"drift"`
	PartID    string  `json:"part_id"`
	Model     struct {
		Version string `json:"version"`
	} `json:"model"`
	LatencyMS struct {
		Total  float64 `json:"total"`
		Invoke float64 `json:"invoke"`
	} `json:"latency_ms"`
}

// TestSparkplugEndToEnd: gnld with GNLD_SPARKPLUG=on against a real
// Mosquitto, checked by an independent Sparkplug B host (pysparkplug, in
// testdata/spb_listen.py): NBIRTH, DBIRTH, then a DDATA per result, each
// decoded with the types of the DBIRTH and equal to the JSON result of the
// same frame; seq continuous over more than 300 messages (through the wrap
// at 255); a rebirth on an NCMD that pysparkplug encoded; births with a new
// bdSeq after a broker restart, and DDATA again; the NDEATH at a clean stop
// with the bdSeq of the last NBIRTH.
func TestSparkplugEndToEnd(t *testing.T) {
	dir, _ := mtdSamples(t, 20, "good")
	// queue_qos0_messages: the listener's persistent session also gets the
	// QoS 0 births that gnld may publish before the listener is back from
	// the broker restart.
	b := testbroker.StartConf(t, "queue_qos0_messages true")
	sub := testbroker.Subscribe(t, b, "gnl/+/+/result")
	lis := startSpbListener(t, b.Port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "cam=dir:" + dir, "GNLD_CAMERA_CAM_LOOP": "true", "GNLD_CAMERA_CAM_FPS": "50",
		"GNLD_SPARKPLUG": "on", "GNLD_SPARKPLUG_GROUP": "plant", "GNLD_LOG_LEVEL": "info",
	}))

	// 1. More than 300 messages in one session: seq wraps at 255.
	lis.waitFor(t, 60*time.Second, "310 DDATA", func(rs []spbRecord) bool { return countType(rs, "DDATA") >= 310 })
	// 2. A rebirth request, encoded by pysparkplug.
	lis.send(t, "rebirth plant dev")
	lis.waitFor(t, 10*time.Second, "births after the rebirth request", func(rs []spbRecord) bool { return countType(rs, "DBIRTH") >= 2 })
	lis.waitFor(t, 10*time.Second, "DDATA after the rebirth", func(rs []spbRecord) bool { return countType(rs, "DDATA") >= 360 })
	// 3. A broker restart.
	b.Stop()
	time.Sleep(1500 * time.Millisecond)
	b.Restart()
	lis.waitFor(t, 30*time.Second, "births after the broker restart", func(rs []spbRecord) bool { return countType(rs, "DBIRTH") >= 3 })
	after := countType(lis.records(), "DDATA")
	lis.waitFor(t, 30*time.Second, "DDATA after the restart", func(rs []spbRecord) bool { return countType(rs, "DDATA") >= after+50 })
	// 4. A clean stop.
	cancel()
	if err := wait(); err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	lis.waitFor(t, 10*time.Second, "NDEATH at stop", func(rs []spbRecord) bool {
		ms := nodeMessages(rs)
		var birth *uint64
		for _, m := range ms {
			if m.Type == "NBIRTH" {
				birth = m.BdSeq
			}
		}
		last := ms[len(ms)-1]
		return last.Type == "NDEATH" && birth != nil && last.BdSeq != nil && *last.BdSeq == *birth
	})

	recs := lis.records()
	lis.mu.Lock()
	if len(lis.bad) > 0 {
		t.Errorf("listener lines that are not JSON: %q", lis.bad)
	}
	lis.mu.Unlock()
	for _, r := range recs {
		if r.Error != "" {
			t.Errorf("pysparkplug could not decode %s: %s", r.Topic, r.Error)
		}
	}
	msgs := nodeMessages(recs)

	// The JSON results, by sequence.
	byseq := map[uint64]jsonResult{}
	for _, m := range sub.On("/cam/result") {
		var r jsonResult
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatal(err)
		}
		byseq[r.Sequence] = r
	}

	wantTypes := map[string]string{}
	for _, d := range sparkplug.DeviceMetrics {
		wantTypes[d.Name] = map[sparkplug.DataType]string{sparkplug.Double: "DOUBLE", sparkplug.String: "STRING",
			sparkplug.Boolean: "BOOLEAN", sparkplug.UInt64: "UINT64"}[d.Type]
	}
	var (
		sessions    []int    // index in msgs of each NBIRTH
		bdSeqs      []uint64 // of each NBIRTH
		longest     int      // most messages in a row with seq continuous
		run         int
		ddata       int
		lastSeq     uint64
		lastNBIRTH  uint64
		ndeathAtEnd *spbRecord
		wills       int // NDEATHs from the broker (Last Will)
	)
	for i, m := range msgs {
		if m.QoS != 0 && m.Type != "NDEATH" || m.Retain {
			t.Errorf("message %d %s: qos %d retain %v, want QoS 0, not retained", i, m.Type, m.QoS, m.Retain)
		}
		switch m.Type {
		case "NBIRTH":
			sessions = append(sessions, i)
			bd, _ := m.metric("bdSeq")
			rb, _ := m.metric(sparkplug.RebirthMetric)
			if m.Seq == nil || *m.Seq != 0 || m.BdSeq == nil || bd.Datatype != "INT64" || rb.Datatype != "BOOLEAN" || string(rb.Value) != "false" {
				t.Fatalf("NBIRTH %d: seq %v bdSeq %v, %s %+v: want seq 0, bdSeq INT64, rebirth BOOLEAN false", i, m.Seq, m.BdSeq, sparkplug.RebirthMetric, rb)
			}
			bdSeqs = append(bdSeqs, *m.BdSeq)
			lastNBIRTH = *m.BdSeq
			if i+1 >= len(msgs) || msgs[i+1].Type != "DBIRTH" || msgs[i+1].Device != "cam" {
				t.Fatalf("NBIRTH %d not followed by DBIRTH cam", i)
			}
			run, lastSeq = 1, 0
			continue
		case "NDEATH":
			if i == len(msgs)-1 {
				ndeathAtEnd = &msgs[i]
				continue
			}
			// The Will of the session the broker restart ended, when the
			// broker delivers it: the bdSeq of that session's NBIRTH (it
			// may come after the next NBIRTH; hosts match by bdSeq).
			wills++
			if m.BdSeq == nil || !slices.Contains(bdSeqs, *m.BdSeq) || m.Seq != nil {
				t.Errorf("NDEATH %d: bdSeq %v seq %v; want the bdSeq of an NBIRTH before it (%v), no seq", i, m.BdSeq, m.Seq, bdSeqs)
			}
			continue
		}
		if len(sessions) == 0 {
			t.Fatalf("message %d %s before any NBIRTH", i, m.Type)
		}
		if m.Seq == nil || *m.Seq != (lastSeq+1)%256 {
			t.Fatalf("message %d %s: seq %v after %d; want %d (no gap within a session)", i, m.Type, m.Seq, lastSeq, (lastSeq+1)%256)
		}
		lastSeq = *m.Seq
		run++
		longest = max(longest, run)
		for _, mt := range m.Metrics {
			if want := wantTypes[mt.Name]; want == "" || mt.Datatype != want {
				t.Errorf("message %d %s metric %s: type %s, want %s", i, m.Type, mt.Name, mt.Datatype, want)
			}
		}
		if m.Type != "DDATA" {
			continue
		}
		ddata++
		if len(m.Metrics) != len(sparkplug.DeviceMetrics) {
			t.Fatalf("DDATA %d: %d metrics, want %d", i, len(m.Metrics), len(sparkplug.DeviceMetrics))
		}
		checkDDATA(t, m, byseq)
	}
	if len(sessions) < 3 {
		t.Fatalf("%d NBIRTHs, want 3: start, rebirth, after the broker restart", len(sessions))
	}
	if bdSeqs[0] != 0 || bdSeqs[1] != bdSeqs[0] || bdSeqs[2] <= bdSeqs[1] {
		t.Errorf("bdSeq of the NBIRTHs %v: want 0 at start, the same at the rebirth, higher after the broker restart", bdSeqs)
	}
	if sessions[1]-sessions[0] < 300 || longest < 300 {
		t.Errorf("first session %d messages, longest continuous run %d: want >= 300", sessions[1]-sessions[0], longest)
	}
	if ndeathAtEnd == nil || ndeathAtEnd.BdSeq == nil || *ndeathAtEnd.BdSeq != lastNBIRTH || ndeathAtEnd.Seq != nil {
		t.Errorf("last message %+v: want the NDEATH of the last session (bdSeq %d, no seq)", msgs[len(msgs)-1], lastNBIRTH)
	}
	// The DBIRTH of the rebirth carries the camera's values, not nulls.
	if seq, _ := msgs[sessions[1]+1].metric("sequence"); seq.IsNull {
		t.Errorf("DBIRTH at the rebirth: sequence null, want the last result's")
	}

	// Every result is accounted for: sent as DDATA, or counted as not sent
	// (the broker was away) or dropped. A DDATA written as the broker
	// stopped may be lost with it (QoS 0).
	st := regexp.MustCompile(`msg="sparkplug: stopped" sent=(\d+) not_sent=(\d+) dropped=(\d+) births=(\d+) rebirths=(\d+)`).FindStringSubmatch(log.String())
	if st == nil {
		t.Fatalf("no sparkplug stop line in the log:\n%s", log)
	}
	n := func(i int) int { v, _ := strconv.Atoi(st[i]); return v }
	sent, notSent, dropped, births, rebirths := n(1), n(2), n(3), n(4), n(5)
	t.Logf("%d JSON results; sparkplug sent %d, not sent %d (broker away), dropped %d; %d DDATA decoded by pysparkplug; %d births (%d rebirths); bdSeqs %v; longest seq run %d; %d Will NDEATH at the broker restart",
		len(byseq), sent, notSent, dropped, ddata, births, rebirths, bdSeqs, longest, wills)
	if sent+notSent+dropped != len(byseq) || dropped != 0 || ddata > sent || sent-ddata > 5 || rebirths != 1 {
		t.Errorf("accounting: %d results, sent %d + not sent %d + dropped %d; %d DDATA received; %d rebirths", len(byseq), sent, notSent, dropped, ddata, rebirths)
	}
	for _, want := range []string{`msg="sparkplug: connected"`, `msg="sparkplug: connection lost; reconnecting`, `msg="sparkplug: connection back"`, `msg="sparkplug: rebirth requested (NCMD); births sent again"`} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

// checkDDATA compares a DDATA with the JSON result of the same sequence.
func checkDDATA(t *testing.T, m spbRecord, byseq map[uint64]jsonResult) {
	t.Helper()
	val := func(name string) spbMetric { v, _ := m.metric(name); return v }
	var seq uint64
	if err := json.Unmarshal(val("sequence").Value, &seq); err != nil {
		t.Fatalf("DDATA sequence %s: %v", val("sequence").Value, err)
	}
	r, ok := byseq[seq]
	if !ok {
		t.Fatalf("DDATA for sequence %d: no JSON result", seq)
	}
	num := func(name string, want float64) {
		var got float64
		if err := json.Unmarshal(val(name).Value, &got); err != nil || got != want {
			t.Errorf("sequence %d: %s %s, JSON %v", seq, name, val(name).Value, want)
		}
	}
	str := func(name, want string) {
		mt := val(name)
		if want == "" {
			if !mt.IsNull {
				t.Errorf("sequence %d: %s %s, want null (JSON has none)", seq, name, mt.Value)
			}
			return
		}
		var got string
		if err := json.Unmarshal(mt.Value, &got); err != nil || got != want {
			t.Errorf("sequence %d: %s %s, JSON %q", seq, name, mt.Value, want)
		}
	}
	num("score", r.Score)
	num("threshold", r.Threshold)
	num("latency_total_ms", r.LatencyMS.Total)
	num("latency_invoke_ms", r.LatencyMS.Invoke)
	str("verdict", r.Verdict)
	str("drift", r.Drift)
	str("part_id", r.PartID)
	str("model_version", r.Model.Version)
	if want := fmt.Sprint(r.Verdict == "anomalous"); string(val("anomalous").Value) != want {
		t.Errorf("sequence %d: anomalous %s, verdict %s", seq, val("anomalous").Value, r.Verdict)
	}
}
