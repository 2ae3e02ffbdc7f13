package main

// Bad input at run time (issue 11, item 3): each test runs gnld on real
// parts (mosquitto, TFLite, OpenCV, MTD images) and injects one fault. In
// each case gnld says what happened in a clear log line, counts it (the
// stats topic and /metrics), loses nothing it accepted without counting
// it, and keeps serving.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"gnld/internal/testbroker"
	"gnld/publish"
)

// silentBroker is a fault injector, not a broker: a TCP server that
// speaks just enough MQTT 3.1.1 to accept a connection (CONNACK),
// subscriptions (SUBACK) and keep-alives (PINGRESP), and swallows every
// PUBLISH without acknowledging it, as an overloaded or wedged broker
// does.
type silentBroker struct {
	ln        net.Listener
	publishes atomic.Int64 // PUBLISH packets swallowed
	conns     atomic.Int64 // connections accepted

	mu   sync.Mutex
	open []net.Conn
	wg   sync.WaitGroup
}

func startSilentBroker(t *testing.T, port int) *silentBroker {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	s := &silentBroker{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c) }()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *silentBroker) serve(c net.Conn) {
	defer c.Close()
	for {
		p, err := packets.ReadPacket(c)
		if err != nil {
			return
		}
		var reply packets.ControlPacket
		switch p := p.(type) {
		case *packets.ConnectPacket:
			reply = packets.NewControlPacket(packets.Connack)
		case *packets.SubscribePacket:
			ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			ack.MessageID, ack.ReturnCodes = p.MessageID, p.Qoss
			reply = ack
		case *packets.PingreqPacket:
			reply = packets.NewControlPacket(packets.Pingresp)
		case *packets.PublishPacket:
			s.publishes.Add(1) // and no PUBACK
		case *packets.DisconnectPacket:
			return
		}
		if reply != nil && reply.Write(c) != nil {
			return
		}
	}
}

// stop closes the listener and every connection, and waits for them.
func (s *silentBroker) stop() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.open {
		c.Close()
	}
	s.open = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// gaps returns the longest time between two of msgs (and from the last
// one to end).
func longestGap(msgs []notifyMsg, from, end time.Time) time.Duration {
	var longest time.Duration
	last := from
	for _, m := range msgs {
		if m.at.Before(from) || m.at.After(end) {
			continue
		}
		longest = max(longest, m.at.Sub(last))
		last = m.at
	}
	return max(longest, end.Sub(last))
}

// checkAllDelivered waits until the subscriber has one result per scored
// frame of camera (sequences 1..scored, de-duplicated) and fails the test
// naming what is missing.
func checkAllDelivered(t *testing.T, sub *testbroker.Subscriber, camera string, scored int, lost map[uint64]bool) []publish.Result {
	t.Helper()
	want := scored - len(lost)
	for deadline := time.Now().Add(30 * time.Second); len(results(t, sub, camera)) < want && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	got := results(t, sub, camera)
	seen := map[uint64]bool{}
	for _, r := range got {
		seen[r.Sequence] = true
	}
	var missing []uint64
	for seq := uint64(1); seq <= uint64(scored); seq++ {
		if !seen[seq] && !lost[seq] {
			missing = append(missing, seq)
		}
	}
	if len(missing) > 0 || len(got) != want {
		t.Errorf("camera %s: %d results for %d scored frames (%d counted as lost); missing %v", camera, len(got), scored, len(lost), missing)
	}
	return got
}

// A broker that accepts the connection and never acknowledges a QoS 1
// publish (the silent broker above, on the port of a real mosquitto that
// is stopped meanwhile). gnld spools every result, says so, counts the
// unacknowledged publishes, drops and remakes the connection after 3 in a
// row, and keeps scoring frames with the systemd keep-alives on time. Once
// the real broker is back on that port every scored frame's result
// reaches the subscriber.
func TestBrokerNeverAcks(t *testing.T) {
	dir, _ := mtdSamples(t, 3, "good")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	sock := listenNotify(t)
	const watchdog = 2 * time.Second
	t.Setenv("NOTIFY_SOCKET", sock.path)
	t.Setenv("WATCHDOG_USEC", fmt.Sprint(watchdog.Microseconds()))
	t.Setenv("WATCHDOG_PID", "")
	port := testbroker.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "cam=dir:" + dir, "GNLD_CAMERA_CAM_LOOP": "true", "GNLD_CAMERA_CAM_FPS": "10",
		"GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port), "GNLD_LOG_LEVEL": "info", "GNLD_MQTT_TIMEOUT": "500ms",
		"GNLD_STATS_INTERVAL": "1s",
	}))
	sub.WaitFor(t, 20*time.Second, "first results", func([]testbroker.Msg) bool { return len(results(t, sub, "cam")) >= 5 })

	b.Stop()
	silent := startSilentBroker(t, b.Port)
	from := time.Now()
	waitLog(t, log, "acknowledged none of the last 3 publishes", 2)
	time.Sleep(2 * time.Second)
	mf := scrape(t, base)
	unacked, spoolLen := metric(mf, "gnld_mqtt_unacknowledged_total"), metric(mf, "gnld_spool_length")
	scoredMid := metric(mf, "gnld_frames_scored_total", "camera", "cam")
	gap := longestGap(sock.with("WATCHDOG=1"), from, time.Now())
	silent.stop()
	t.Logf("silent broker: %d connections, %d publishes swallowed, %.0f unacknowledged, spool %.0f, longest keep-alive gap %s",
		silent.conns.Load(), silent.publishes.Load(), unacked, spoolLen, gap.Round(time.Millisecond))
	if unacked < 3 || spoolLen < 5 || silent.publishes.Load() < 3 || silent.conns.Load() < 2 {
		t.Errorf("with a broker that never acknowledges: unacked %v, spool %v, publishes %d, connections %d; want results spooled, counted, and a new connection",
			unacked, spoolLen, silent.publishes.Load(), silent.conns.Load())
	}
	if gap >= watchdog {
		t.Errorf("keep-alives %s apart while the broker did not acknowledge (WatchdogSec %s): systemd would have killed gnld", gap, watchdog)
	}

	b.Restart()
	waitFor(t, 20*time.Second, "the spool to empty", func() bool {
		mf := scrape(t, base)
		return metric(mf, "gnld_spool_length") == 0 && metric(mf, "gnld_frames_scored_total", "camera", "cam") > scoredMid+5
	})
	cancel()
	if err := wait(); err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	sub.WaitFor(t, 10*time.Second, "offline", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status")
		return len(st) > 1 && string(st[len(st)-1].Payload) == "offline"
	})
	var final struct {
		MQTT    publish.Stats          `json:"mqtt"`
		Cameras map[string]cameraStats `json:"cameras"`
	}
	stats := sub.On("/dev/stats")
	if err := json.Unmarshal(stats[len(stats)-1].Payload, &final); err != nil {
		t.Fatal(err)
	}
	got := checkAllDelivered(t, sub, "cam", int(final.Cameras["cam"].Processed), nil)
	t.Logf("%d results delivered; final stats: %+v", len(got), final.MQTT)
	if final.MQTT.Unacked < uint64(unacked) || final.MQTT.SpoolDropped != 0 {
		t.Errorf("final stats %+v: want unacked >= %v, nothing dropped", final.MQTT, unacked)
	}
	logText := log.String()
	for _, want := range []string{`level=WARN msg="mqtt: the broker acknowledged none of the last 3 publishes within GNLD_MQTT_TIMEOUT; reconnecting, results go to the spool meanwhile"`,
		`msg="mqtt: connection back"`} {
		if !strings.Contains(logText, want) {
			t.Errorf("log lacks %s:\n%s", want, logText)
		}
	}
}

// copyBundle copies the bundle in from to a new folder (a real folder,
// not a link: files are replaced in it in place).
func copyBundle(t *testing.T, from string) string {
	dir := t.TempDir()
	for _, f := range []string{"model.json", "model.tflite"} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// setHash writes model.json in dir with model_sha256 set to model.tflite's
// hash, as an export of that file would.
func setHash(t *testing.T, dir string) {
	tfl, err := os.ReadFile(filepath.Join(dir, "model.tflite"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "model.json"))
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(tfl)
	m["model_sha256"] = hex.EncodeToString(sum[:])
	b, _ = json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "model.json"), b, 0o644)
}

// The bundle in GNLD_MODEL_DIR, a plain folder, is overwritten in place
// while gnld runs, as a careless deploy (a copy over the files, a disk
// that filled up, an export that broke) would leave it; a SIGHUP follows
// each change. gnld refuses each bundle in one ERROR line naming the file
// and the problem, counts it (stats topic model.reloads_refused,
// gnld_model_reloads_total{result="refused"}), goes on scoring every frame
// with the model it had, and takes a good bundle copied in afterwards.
func TestCorruptBundleMidRun(t *testing.T) {
	dir, _ := mtdSamples(t, 3, "good")
	vA, vB := version(t, tinyBundle), version(t, tinyFloatBundle)
	bundle := copyBundle(t, tinyBundle)
	tflite, meta := filepath.Join(bundle, "model.tflite"), filepath.Join(bundle, "model.json")
	good, _ := os.ReadFile(tflite)
	goodMeta, _ := os.ReadFile(meta)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	port := testbroker.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "cam=dir:" + dir, "GNLD_CAMERA_CAM_LOOP": "true", "GNLD_CAMERA_CAM_FPS": "20",
		"GNLD_MODEL_DIR": bundle, "GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port), "GNLD_LOG_LEVEL": "info",
		"GNLD_STATS_INTERVAL": "500ms", "GNLD_CALIBRATION_DIR": t.TempDir(),
	}))
	more := func(n int) {
		t.Helper()
		have := len(results(t, sub, "cam"))
		sub.WaitFor(t, 30*time.Second, fmt.Sprintf("%d more results", n), func([]testbroker.Msg) bool { return len(results(t, sub, "cam")) >= have+n })
	}
	more(3)
	for i, c := range []struct {
		name, want string
		corrupt    func()
	}{
		{"model.tflite cut short", tflite + ": SHA-256 is ", func() { os.WriteFile(tflite, good[:len(good)/3], 0o644) }},
		{"model.tflite not a model, hash matching", tflite + ": not a TensorFlow Lite flatbuffer (truncated or corrupt?)", func() {
			os.WriteFile(tflite, []byte(strings.Repeat("not a flatbuffer ", 4096)), 0o644)
			setHash(t, bundle)
		}},
		{"model.tflite cut short, hash matching", tflite + ": not a TensorFlow Lite flatbuffer (truncated or corrupt?)", func() {
			os.WriteFile(tflite, good[:len(good)/2], 0o644)
			setHash(t, bundle)
		}},
		{"model.json cut short", meta + ": not valid JSON", func() {
			os.WriteFile(tflite, good, 0o644)
			os.WriteFile(meta, goodMeta[:len(goodMeta)/2], 0o644)
		}},
	} {
		c.corrupt()
		sighup(t)
		waitLog(t, log, "model: reload refused", i+1)
		line := regexpLine(log.String(), "model: reload refused", i)
		if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, c.want) || !strings.Contains(line, "serving="+vA) ||
			!strings.Contains(line, fmt.Sprintf("refused=%d", i+1)) {
			t.Errorf("%s: refusal %q; want one error naming %q", c.name, line, c.want)
		}
		more(3) // still serving
	}
	mf := scrape(t, base)
	if r, l := metric(mf, "gnld_model_reloads_total", "result", "refused"), metric(mf, "gnld_model_reloads_total", "result", "loaded"); r != 4 || l != 0 {
		t.Errorf("gnld_model_reloads_total: refused %v, loaded %v; want 4, 0", r, l)
	}
	var st struct {
		Model modelStats `json:"model"`
	}
	sub.WaitFor(t, 10*time.Second, "stats with the refusals", func([]testbroker.Msg) bool {
		msgs := sub.On("/dev/stats")
		return len(msgs) > 0 && json.Unmarshal(msgs[len(msgs)-1].Payload, &st) == nil && st.Model.Refused == 4
	})
	if st.Model.Version != vA || !strings.Contains(st.Model.LastRefusal, "not valid JSON") {
		t.Errorf("stats model %+v", st.Model)
	}

	// A good bundle, copied in place: taken.
	other := copyBundle(t, tinyFloatBundle)
	for _, f := range []string{"model.tflite", "model.json"} {
		b, _ := os.ReadFile(filepath.Join(other, f))
		os.WriteFile(filepath.Join(bundle, f), b, 0o644)
	}
	sighup(t)
	sub.WaitFor(t, 30*time.Second, "results of the good bundle", func([]testbroker.Msg) bool {
		return countVersion(results(t, sub, "cam"), vB) >= 3
	})
	if l := metric(scrape(t, base), "gnld_model_reloads_total", "result", "loaded"); l != 1 {
		t.Errorf("gnld_model_reloads_total{result=loaded} %v, want 1", l)
	}
	cancel()
	if err := wait(); err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	rs := results(t, sub, "cam")
	for i, r := range rs {
		if r.Sequence != uint64(i+1) {
			t.Fatalf("result %d has sequence %d: a frame was lost", i, r.Sequence)
		}
	}
	t.Logf("%d results, sequences 1..%d; %d of %s, then %d of %s", len(rs), len(rs), countVersion(rs, vA), vA, countVersion(rs, vB), vB)
}

// regexpLine returns the i-th log line (0-based) containing s.
func regexpLine(log, s string, i int) string {
	for line := range strings.Lines(log) {
		if strings.Contains(line, s) {
			if i == 0 {
				return strings.TrimSpace(line)
			}
			i--
		}
	}
	return ""
}
