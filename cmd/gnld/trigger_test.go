package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"gnld/internal/testbroker"
	"gnld/publish"
)

func TestParseTrigger(t *testing.T) {
	for _, tc := range []struct {
		payload, id, fields, err string
	}{
		{`{"part_id":"4711","station":3,"recipe":{"name":"A"}}`, "4711", `{"recipe":{"name":"A"},"station":3}`, ""},
		{`{"part_id": 4711}`, "4711", "", ""},
		{`{"part_id": 1e3}`, "1e3", "", ""},
		{"  P-0001\n", "P-0001", "", ""},
		{`"P 2"`, "P 2", "", ""},
		{"4711", "4711", "", ""},
		{"", "", "", "empty payload"},
		{"   ", "", "", "empty payload"},
		{`{"part_id":"4711"`, "", "", "not valid JSON"},
		{`{"station":3}`, "", "", `JSON without "part_id"`},
		{`{"part_id":null}`, "", "", `"part_id" is null, want a string or a number`},
		{`{"part_id":["a"]}`, "", "", `"part_id" is ["a"]`},
		{`{"part_id":""}`, "", "", "empty part id"},
		{`[1,2]`, "", "", "a JSON array"},
		{`"open`, "", "", "not a valid JSON string"},
		{"a\x00b", "", "", "control characters"},
		{"\xff\xfe", "", "", "not UTF-8"},
		{strings.Repeat("x", 300), "", "", "more than 256"},
		{strings.Repeat(" ", 70000) + "x", "x", "", ""},
		{"{" + strings.Repeat(" ", 70000) + "}", "", "", "more than 65536"},
	} {
		tr, err := parseTrigger([]byte(tc.payload))
		got := ""
		if err != nil {
			got = err.Error()
		}
		fields := ""
		if tr.fields != nil {
			b, _ := json.Marshal(tr.fields)
			fields = string(b)
		}
		switch {
		case tc.err == "" && (err != nil || tr.partID != tc.id || fields != tc.fields):
			t.Errorf("%q: id %q fields %s err %v; want id %q fields %s", clip([]byte(tc.payload)), tr.partID, fields, err, tc.id, tc.fields)
		case tc.err != "" && (err == nil || !strings.Contains(got, tc.err)):
			t.Errorf("%q: err %v, want one containing %q", clip([]byte(tc.payload)), err, tc.err)
		case tc.err != "" && !strings.Contains(got, "part_id") && !strings.Contains(got, "part id"):
			t.Errorf("%q: err %q does not say what to send", clip([]byte(tc.payload)), got)
		}
	}
}

// plc is a test MQTT client that publishes triggers, as a PLC would.
func plc(t testing.TB, b *testbroker.Broker) mqtt.Client {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(fmt.Sprintf("plc-%d", time.Now().UnixNano())))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("plc connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func send(t testing.TB, c mqtt.Client, topic, payload string, retained bool) {
	if tok := c.Publish(topic, 1, retained, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// waitOnline waits for gnld's retained "online": its subscriptions are
// in place by then.
func waitOnline(t testing.TB, sub *testbroker.Subscriber) {
	sub.WaitFor(t, 30*time.Second, "online", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status")
		return len(st) > 0 && string(st[len(st)-1].Payload) == "online"
	})
}

// finalStats stops gnld and returns the cameras of its last stats message.
func finalStats(t testing.TB, sub *testbroker.Subscriber, cancel func(), wait func() error) map[string]cameraStats {
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	return offlineStats(t, sub).Cameras
}

// Trigger mode with a real broker: a camera loops over MTD images at 30
// fps while a PLC sends 12 triggers in the formats gnld takes, some back
// to back, with malformed and retained ones among them. Each valid
// trigger gives one result, in order, with its part id and echoed fields,
// scoring a frame captured after the trigger was sent; frames between
// triggers are not scored; the malformed ones are logged and counted. A
// free-running camera beside it scores every frame.
func TestTriggerMode(t *testing.T) {
	dir, _ := mtdSamples(t, 2, "good", "crack")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	p := plc(t, b)
	topic := "gnl/test/plc/trigger"
	send(t, p, topic, `{"part_id":"retained-1"}`, true) // waiting for gnld when it subscribes
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS":         "plc=dir:" + dir + ",free=dir:" + dir,
		"GNLD_CAMERA_PLC_LOOP": "true", "GNLD_CAMERA_PLC_FPS": "30", "GNLD_CAMERA_PLC_TRIGGER": "mqtt",
		"GNLD_CAMERA_FREE_LOOP": "true", "GNLD_CAMERA_FREE_FPS": "30",
		"GNLD_STATS_INTERVAL": "1m", "GNLD_LOG_LEVEL": "info", "GNLD_CALIBRATION_DIR": t.TempDir(),
	}))
	waitOnline(t, sub)

	type sent struct {
		id     string
		fields string
		at     time.Time
	}
	var want []sent
	valid := []struct{ payload, id, fields string }{
		{`{"part_id":"P-001","station":3,"recipe":"A"}`, "P-001", `{"recipe":"A","station":3}`},
		{"P-002", "P-002", ""},
		{`{"part_id":4711}`, "4711", ""},
		{`"P-004"`, "P-004", ""},
	}
	malformed := []string{"{bad json", `{"station":1}`, "", `[1,2]`}
	for i := range 12 {
		v := valid[i%len(valid)]
		id, payload := v.id, v.payload
		if i >= len(valid) { // unique ids from here on
			id = fmt.Sprintf("%s%d", v.id, i)
			payload = strings.Replace(payload, v.id, id, 1)
		}
		want = append(want, sent{id, v.fields, time.Now()})
		send(t, p, topic, payload, false)
		if i%3 == 0 && i/3 < len(malformed) {
			send(t, p, topic, malformed[i/3], false)
		}
		if i%4 != 3 { // every fourth follows the one before at once: queued
			time.Sleep(time.Duration(50+rand.IntN(100)) * time.Millisecond)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); len(results(t, sub, "plc")) < len(want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d results for %d triggers after 30 s:\n%s", len(results(t, sub, "plc")), len(want), log)
		}
	}
	time.Sleep(300 * time.Millisecond) // any extra result would arrive now
	cams := finalStats(t, sub, cancel, wait)

	got := results(t, sub, "plc")
	if len(got) != len(want) {
		t.Fatalf("%d results for %d triggers", len(got), len(want))
	}
	var lat []float64
	for i, r := range got {
		fields := ""
		if r.Trigger != nil {
			b, _ := json.Marshal(r.Trigger)
			fields = string(b)
		}
		if r.PartID != want[i].id || fields != want[i].fields || !r.Timestamp.After(want[i].at) || r.LatencyMS.Trigger <= 0 ||
			(i > 0 && r.Sequence <= got[i-1].Sequence) || r.ThresholdSource != "bundle" || r.Model.Version == "" {
			t.Errorf("result %d: part %q fields %s frame at %s seq %d trigger latency %v; want part %q fields %s, a frame after %s",
				i, r.PartID, fields, r.Timestamp.Format("15:04:05.000"), r.Sequence, r.LatencyMS.Trigger, want[i].id, want[i].fields, want[i].at.Format("15:04:05.000"))
		}
		lat = append(lat, r.LatencyMS.Trigger)
	}
	slices.Sort(lat)
	t.Logf("trigger-to-result latency, 12 triggers at 30 fps on the tiny bundle: median %.1f ms, max %.1f ms", lat[len(lat)/2], lat[len(lat)-1])

	pc, free := cams["plc"], cams["free"]
	if pc.Trigger == nil || pc.Trigger.Received != 12 || pc.Trigger.Answered != 12 || pc.Trigger.Malformed != uint64(len(malformed)+1) ||
		pc.Trigger.Overflow != 0 || pc.Trigger.Unanswered != 0 || pc.Trigger.NotScored == 0 || pc.Processed != 12 ||
		pc.Frames != pc.Processed+pc.Trigger.NotScored {
		t.Errorf("plc stats %+v trigger %+v", pc, pc.Trigger)
	}
	if free.Trigger != nil || free.Processed != free.Frames || len(results(t, sub, "free")) != int(free.Processed) {
		t.Errorf("free-running camera: stats %+v, %d results", free, len(results(t, sub, "free")))
	}
	lines := regexp.MustCompile(`(?m)^.*trigger ignored.*$`).FindAllString(log.String(), -1)
	if len(lines) != len(malformed)+1 || !strings.Contains(lines[0], "retained") {
		t.Errorf("%d trigger-ignored lines, want %d (first: retained):\n%s", len(lines), len(malformed)+1, strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "camera=plc") {
			t.Errorf("malformed trigger line %q: want a warning naming the camera", l)
		}
	}
}

// A burst of triggers while the model is busy (the default bundle, about
// 150 ms a frame here) with a queue of 2: the ones that fit are answered
// in order, the rest are refused, each counted and logged with its part
// id; none is lost without a trace.
func TestTriggerQueueOverflow(t *testing.T) {
	dir, _ := mtdSamples(t, 2, "good")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	p := plc(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := testbroker.FreePort(t)
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "plc=dir:" + dir, "GNLD_CAMERA_PLC_LOOP": "true", "GNLD_CAMERA_PLC_FPS": "30",
		"GNLD_CAMERA_PLC_TRIGGER": "mqtt", "GNLD_TRIGGER_QUEUE": "2", "GNLD_MODEL_DIR": defaultBundle,
		"GNLD_STATS_INTERVAL": "1m", "GNLD_LOG_LEVEL": "info", "GNLD_CALIBRATION_DIR": t.TempDir(),
		"GNLD_SHUTDOWN_TIMEOUT": "60s", "GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port),
	}))
	waitOnline(t, sub)
	const n = 10
	for i := range n {
		send(t, p, "gnl/test/plc/trigger", fmt.Sprintf("burst-%d", i), false)
	}
	refusedRe := regexp.MustCompile(`trigger refused: queue full.* part_id=(\S+)`)
	var refused []string
	sub.WaitFor(t, 60*time.Second, "every trigger answered or refused", func([]testbroker.Msg) bool {
		refused = nil
		for _, m := range refusedRe.FindAllStringSubmatch(log.String(), -1) {
			refused = append(refused, m[1])
		}
		return len(results(t, sub, "plc"))+len(refused) == n
	})
	send(t, p, "gnl/test/plc/trigger", "{not json", false)
	waitFor(t, 5*time.Second, "the malformed trigger counted", func() bool { return strings.Contains(log.String(), "trigger ignored: malformed") })
	mf := scrape(t, fmt.Sprintf("http://127.0.0.1:%d", port))
	cams := finalStats(t, sub, cancel, wait)
	// /metrics says what the stats topic says (no trigger came after the
	// scrape).
	st := cams["plc"].Trigger
	for _, m := range []struct {
		name   string
		labels []string
		want   uint64
	}{
		{"gnld_triggers_received_total", nil, st.Received},
		{"gnld_triggers_answered_total", nil, st.Answered},
		{"gnld_triggers_refused_total", []string{"reason", "queue_full"}, st.Overflow},
		{"gnld_triggers_refused_total", []string{"reason", "malformed"}, st.Malformed},
		{"gnld_triggers_no_frame_total", nil, 0},
	} {
		if got := metric(mf, m.name, append([]string{"camera", "plc"}, m.labels...)...); got != float64(m.want) {
			t.Errorf("/metrics %s%v = %v, want %d (the stats topic)", m.name, m.labels, got, m.want)
		}
	}
	if st.Malformed != 1 {
		t.Errorf("malformed triggers: %d, want 1", st.Malformed)
	}
	var answered []string
	for _, r := range results(t, sub, "plc") {
		answered = append(answered, r.PartID)
	}
	var wantAnswered []string
	for i := range n {
		if id := fmt.Sprintf("burst-%d", i); !slices.Contains(refused, id) {
			wantAnswered = append(wantAnswered, id)
		}
	}
	t.Logf("answered %v, refused %v", answered, refused)
	if len(refused) == 0 || !slices.Equal(answered, wantAnswered) || st == nil || st.Overflow != uint64(len(refused)) ||
		st.Received != uint64(len(answered)) || st.Answered != st.Received {
		t.Errorf("answered %v, want %v; refused %v; stats %+v", answered, wantAnswered, refused, st)
	}
}

// BenchmarkTriggerLatency measures trigger-to-result latency against the
// target: at most the model's invoke time plus 2 frame intervals. A
// camera loops over MTD images at 10 fps in trigger mode on the default
// bundle; each iteration sends a trigger at a random phase of the frame
// clock and waits for its result. Metrics (medians unless named):
// trigger-ms (gnld's arrival of the trigger to its result, as the result
// reports it), e2e-ms (the PLC's publish to the result's arrival at a
// subscriber, both MQTT hops included), invoke-ms, budget-ms (invoke + 2
// intervals), wait-intervals (trigger-ms less the pipeline's own time, in
// frame intervals: the target is at most 2) and max-trigger/budget (the
// worst trigger against its own frame's invoke + 2 intervals: at most 1
// meets the target). Run: make bench, or
// go test -run '^$' -bench TriggerLatency -benchtime 30x ./cmd/gnld
func BenchmarkTriggerLatency(b *testing.B) {
	const fps = 10.0
	dir, _ := mtdSamples(b, 3, "good", "crack")
	br := testbroker.Start(b)
	p := plc(b, br)
	arrived := make(chan publish.Result, 16)
	rc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(br.URL()).SetClientID("bench-sub"))
	if tok := rc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	defer rc.Disconnect(100)
	rc.Subscribe("gnl/test/+/result", 1, func(_ mqtt.Client, m mqtt.Message) {
		var r publish.Result
		json.Unmarshal(m.Payload(), &r)
		arrived <- r
	}).WaitTimeout(5 * time.Second)
	sub := testbroker.Subscribe(b, br, "gnl/test/dev/status")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, stop := startGnld(b, ctx, baseEnv(b, br.URL(), map[string]string{
		"GNLD_CAMERAS": "plc=dir:" + dir, "GNLD_CAMERA_PLC_LOOP": "true", "GNLD_CAMERA_PLC_FPS": fmt.Sprint(fps),
		"GNLD_CAMERA_PLC_TRIGGER": "mqtt", "GNLD_MODEL_DIR": defaultBundle, "GNLD_LOG_LEVEL": "warn",
		"GNLD_CALIBRATION_DIR": b.TempDir(),
	}))
	waitOnline(b, sub)
	interval := time.Duration(float64(time.Second) / fps)
	var trig, e2e, invoke, wait, ratio []float64
	b.ResetTimer()
	for i := range b.N {
		time.Sleep(time.Duration(rand.Int64N(int64(interval))))
		id := fmt.Sprint("bench-", i)
		t0 := time.Now()
		send(b, p, "gnl/test/plc/trigger", id, false)
		select {
		case r := <-arrived:
			e2e = append(e2e, ms(time.Since(t0)))
			if r.PartID != id {
				b.Fatalf("result for %q, want %q", r.PartID, id)
			}
			l := r.LatencyMS
			trig, invoke = append(trig, l.Trigger), append(invoke, l.Invoke)
			wait = append(wait, (l.Trigger-l.Normalize-l.Invoke-l.Post)/ms(interval))
			ratio = append(ratio, l.Trigger/(l.Invoke+2*ms(interval)))
		case <-time.After(30 * time.Second):
			b.Fatalf("no result for trigger %s", id)
		}
	}
	b.StopTimer()
	cancel()
	stop()
	q := func(v []float64, p float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[min(len(s)-1, int(p*float64(len(s))))]
	}
	budget := q(invoke, 0.5) + 2*ms(interval)
	b.ReportMetric(q(trig, 0.5), "trigger-ms")
	b.ReportMetric(q(e2e, 0.5), "e2e-ms")
	b.ReportMetric(q(invoke, 0.5), "invoke-ms")
	b.ReportMetric(budget, "budget-ms")
	b.ReportMetric(q(wait, 0.5), "wait-intervals")
	b.ReportMetric(slices.Max(ratio), "max-trigger/budget")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkReload measures one reload of the default bundle for one
// camera: load and hash, interpreter and tensor checks, warm-up frame.
// Run: go test -run '^$' -bench Reload -benchtime 10x ./cmd/gnld
func BenchmarkReload(b *testing.B) {
	setEnv(b, map[string]string{
		"GNLD_CAMERAS": "a=dir:/nonexistent", "GNLD_MODEL_DIR": defaultBundle, "GNLD_SPOOL_DIR": b.TempDir(),
		"GNLD_CALIBRATION_DIR": b.TempDir(), "GNLD_DEVICE": "bench",
	})
	cfg, err := loadConfig()
	if err != nil {
		b.Fatal(err)
	}
	d, err := newDaemon(cfg, newLogger(cfg, io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	defer d.close()
	b.ResetTimer()
	for range b.N {
		if err := d.reload(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
