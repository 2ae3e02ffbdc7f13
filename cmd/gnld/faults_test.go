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
	"image"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"gocv.io/x/gocv"

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
// row, keeps spooling results as they come (a try holds the sender for
// GNLD_MQTT_TIMEOUT, so it waits that long before the next), and keeps
// scoring frames with the systemd keep-alives on time. Once
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
	scoredBefore := metric(scrape(t, base), "gnld_frames_scored_total", "camera", "cam")
	waitLog(t, log, "acknowledged none of the last 3 publishes", 2)
	time.Sleep(2 * time.Second)
	mf := scrape(t, base)
	unacked, spoolLen := metric(mf, "gnld_mqtt_unacknowledged_total"), metric(mf, "gnld_spool_length")
	scoredMid := metric(mf, "gnld_frames_scored_total", "camera", "cam")
	gap := longestGap(sock.with("WATCHDOG=1"), from, time.Now())
	silent.stop()
	t.Logf("silent broker for %s: %.0f frames scored, %d connections, %d publishes swallowed, %.0f unacknowledged, spool %.0f, longest keep-alive gap %s",
		time.Since(from).Round(time.Millisecond), scoredMid-scoredBefore, silent.conns.Load(), silent.publishes.Load(), unacked, spoolLen, gap.Round(time.Millisecond))
	// The results reach the spool as they come (the sender is not held up
	// by the tries), except those queued for it.
	if unacked < 3 || spoolLen < (scoredMid-scoredBefore)/2 || silent.publishes.Load() < 3 || silent.conns.Load() < 2 {
		t.Errorf("with a broker that never acknowledges: unacked %v, spool %v, publishes %d, connections %d; want results spooled, counted, and a new connection\n%s",
			unacked, spoolLen, silent.publishes.Load(), silent.conns.Load(), log)
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
	final := offlineStats(t, sub)
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
		{"model.tflite not a model, hash matching", tflite + ": not a TensorFlow Lite flatbuffer (", func() {
			os.WriteFile(tflite, []byte(strings.Repeat("not a flatbuffer ", 4096)), 0o644)
			setHash(t, bundle)
		}},
		{"model.tflite cut short, hash matching", tflite + ": not a TensorFlow Lite flatbuffer (", func() {
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

// tmpfsSpoolEnv, set to gnld's binary, makes this test binary tmpfsSpool.
const tmpfsSpoolEnv = "GNLD_TEST_TMPFS_SPOOL"

func TestMain(m *testing.M) {
	if bin := os.Getenv(tmpfsSpoolEnv); bin != "" {
		tmpfsSpool(bin)
	}
	os.Exit(m.Run())
}

// tmpfsSpool runs in a child of TestSpoolDiskFull, in a mount namespace
// of its own: it mounts a 64 KiB tmpfs on GNLD_SPOOL_DIR, visible to this
// process only, and becomes gnld (bin). "/" is made private first, so
// that nothing propagates to the test's namespace (in a chroot such as
// the build root that fails, and the root's mounts are private already);
// the spool folder is made a private mount point of its own.
func tmpfsSpool(bin string) {
	dir := os.Getenv("GNLD_SPOOL_DIR")
	must := func(err error, what string) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "tmpfs spool: %s: %v\n", what, err)
			os.Exit(2)
		}
	}
	syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, "")
	must(syscall.Mount(dir, dir, "", syscall.MS_BIND, ""), "bind")
	must(syscall.Mount("", dir, "", syscall.MS_PRIVATE, ""), "make private")
	must(syscall.Mount("gnld-spool", dir, "tmpfs", 0, "size=64k,mode=0700"), "mount tmpfs")
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, tmpfsSpoolEnv+"=") })
	must(syscall.Exec(bin, []string{bin}, env), "exec gnld")
}

// The spool's file system is full (a 64 KiB tmpfs, mounted for gnld alone
// in a private mount namespace) while the broker is away. gnld spools
// what fits, then says in one ERROR line that results are being lost and
// why, counts each one (spool_write_failed, part of spool_dropped), keeps
// scoring and stays healthy; once the broker is back it publishes the
// spool and every later result. What is lost is exactly what it counted:
// results made while the broker was away that did not fit on the disk.
func TestSpoolDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs in a private mount namespace (make test runs as root in the build root)")
	}
	dir, _ := mtdSamples(t, 3, "good")
	bin := buildGnld(t)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	b.Stop()
	spool := filepath.Join(t.TempDir(), "spool")
	os.MkdirAll(spool, 0o700)
	port := testbroker.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	// This test binary, in a mount namespace of its own (tmpfsSpool),
	// mounts the tmpfs and becomes gnld.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	cmd.Env = append(environ(baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "cam=dir:" + dir, "GNLD_CAMERA_CAM_LOOP": "true", "GNLD_CAMERA_CAM_FPS": "20",
		"GNLD_SPOOL_DIR": spool, "GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port), "GNLD_LOG_LEVEL": "info",
		"GNLD_MQTT_TIMEOUT": "500ms", "GNLD_STATS_INTERVAL": "1s", "GNLD_SHUTDOWN_TIMEOUT": "5s",
	})), tmpfsSpoolEnv+"="+bin)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "spool: cannot write, result lost"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the spool did not fill up:\n%s", out)
		}
	}
	time.Sleep(time.Second)
	mf := scrape(t, base)
	failed, spoolLen := metric(mf, "gnld_spool_write_failures_total"), metric(mf, "gnld_spool_length")
	if failed < 1 || spoolLen < 5 || metric(mf, "gnld_spool_dropped_total") != failed {
		t.Errorf("disk full: write failures %v, spool %v, dropped %v; want results spooled until the disk was full, the rest counted",
			failed, spoolLen, metric(mf, "gnld_spool_dropped_total"))
	}
	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz with the spool's disk full: %d %s", code, body)
	}
	files, _ := os.ReadDir(filepath.Join(fmt.Sprintf("/proc/%d/root", cmd.Process.Pid), spool))
	host, _ := os.ReadDir(spool)
	t.Logf("disk full after %d spool files (none on the host's folder: %d); %v results lost so far", len(files), len(host), failed)

	b.Restart()
	scored := metric(mf, "gnld_frames_scored_total", "camera", "cam")
	waitFor(t, 20*time.Second, "the spool to empty", func() bool {
		mf := scrape(t, base)
		return metric(mf, "gnld_spool_length") == 0 && metric(mf, "gnld_frames_scored_total", "camera", "cam") > scored+10
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	final := offlineStats(t, sub)
	n := final.Cameras["cam"].Processed
	got := results(t, sub, "cam")
	seen := map[uint64]bool{}
	for _, r := range got {
		seen[r.Sequence] = true
	}
	var missing []uint64
	for seq := uint64(1); seq <= n; seq++ {
		if !seen[seq] {
			missing = append(missing, seq)
		}
	}
	t.Logf("%d frames scored, %d results delivered, %d lost (sequences %d..%d), counted: spool_write_failed %d, spool_dropped %d",
		n, len(got), len(missing), missing[0], missing[len(missing)-1], final.MQTT.SpoolWriteFailed, final.MQTT.SpoolDropped)
	if uint64(len(missing)) != final.MQTT.SpoolWriteFailed || final.MQTT.SpoolDropped != final.MQTT.SpoolWriteFailed || len(missing) == 0 {
		t.Errorf("%d results missing, but the stats count %d write failures and %d drops: every loss must be counted, and only those",
			len(missing), final.MQTT.SpoolWriteFailed, final.MQTT.SpoolDropped)
	}
	if c := strings.Count(out.String(), "spool: cannot write, result lost"); c != 1 {
		t.Errorf("%d 'cannot write' lines, want 1 (then a summary every 10 s):\n%s", c, out)
	}
	if strings.Contains(out.String(), "panic") {
		t.Errorf("panic:\n%s", out)
	}
}

// Frames of changing size: a folder of MTD images (nearly every one of
// its own size) and a video file whose frames change size from one to the
// next (the same JPEGs one after another: an MJPEG stream, as IP cameras
// send, read through OpenCV's FFmpeg backend). Every frame is scored, none
// refused, and the folder's scores are those the pipeline gives each
// image.
//
// OpenCV 4.10's FFmpeg backend does not follow a size change within one
// connection: it keeps converting to the first frame's size (FFmpeg's
// scaler says "Slice parameters ... are invalid") and hands on frames of
// that size holding the last good picture or a garbled one. gnld cannot
// tell them from real frames; this test pins that behaviour down (the
// video's frames all keep the first size, so capture sees no change), and
// docs/CONFIG.md says to restart a stream whose resolution changes. A source that
// does deliver frames of a new size has them scored, with a warning and a
// count (capture's size_changes).
func TestFrameSizeChanges(t *testing.T) {
	dir, files := mtdSamples(t, 4, "good", "crack", "blowhole")
	var mjpeg []byte
	var frames []gocv.Mat
	sizes := map[image.Point]bool{}
	for _, f := range files {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		mjpeg = append(mjpeg, b...)
		m := gocv.IMRead(filepath.Join(dir, f), gocv.IMReadColor)
		sizes[image.Pt(m.Cols(), m.Rows())] = true
		frames = append(frames, m)
	}
	want := expected(t, frames)
	clip := filepath.Join(t.TempDir(), "line.mjpeg")
	os.WriteFile(clip, mjpeg, 0o644)
	if len(sizes) < len(files)/2 {
		t.Fatalf("only %d sizes among %d images", len(sizes), len(files))
	}

	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	err, log := runGnld(t, context.Background(), baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "folder=dir:" + dir + ",video=file:" + clip, "GNLD_STATS_INTERVAL": "1m", "GNLD_LOG_LEVEL": "info",
	}))
	if err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	sub.WaitFor(t, 10*time.Second, "final stats", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status")
		return len(st) > 1 && string(st[len(st)-1].Payload) == "offline"
	})
	var stats struct {
		Cameras map[string]cameraStats `json:"cameras"`
	}
	msgs := sub.On("/dev/stats")
	if err := json.Unmarshal(msgs[len(msgs)-1].Payload, &stats); err != nil {
		t.Fatal(err)
	}
	for i, r := range results(t, sub, "folder") {
		if r.Sequence != uint64(i+1) || r.File != files[i] || r.Score != want[i].Score {
			t.Errorf("folder result %d: seq %d %s score %v; want %d %s %v", i, r.Sequence, r.File, r.Score, i+1, files[i], want[i].Score)
		}
	}
	for _, cam := range []string{"folder", "video"} {
		st := stats.Cameras[cam]
		t.Logf("%s: %d frames, %d scored, %d bad, %d skipped, %d size changes", cam, st.Frames, st.Processed, st.Bad, st.Skipped, st.SizeChanges)
		if st.Frames != uint64(len(files)) || st.Processed != st.Frames || st.Bad != 0 || st.Skipped != 0 || len(results(t, sub, cam)) != len(files) {
			t.Errorf("%s: %+v, %d results; want all %d frames scored and published", cam, st, len(results(t, sub, cam)), len(files))
		}
	}
	if n := stats.Cameras["video"].SizeChanges; n != 0 {
		t.Errorf("video: %d size changes: OpenCV's FFmpeg backend now follows a size change; update README and this test", n)
	}
}

// Clock jumps. This process cannot move the system clock (no
// CAP_SYS_TIME here, and the machine is shared), so the test goes in
// where wall-clock time enters gnld from outside: results in the spool
// written by a run whose clock was ten years ahead (timestamps, run_id and
// file times from the future), and triggers whose payloads carry
// timestamps far in the past and the future. The spool is replayed in the
// order it was written, before the new run's results, none lost; each
// trigger is answered by the next frame, its fields echoed, its latency
// measured from its arrival. (gnld's own intervals, keep-alives, worker
// beats and the page's history are on the monotonic clock or tolerate a
// step: see health.go, internal/sdnotify and TestHistoryClockSetBack.)
func TestClockJumps(t *testing.T) {
	dir1, files1 := mtdSamples(t, 3, "good")
	dir2, _ := mtdSamples(t, 2, "crack")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	b.Stop()
	spool := filepath.Join(t.TempDir(), "spool")
	err, log := runGnld(t, context.Background(), baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "cam=dir:" + dir1, "GNLD_SPOOL_DIR": spool, "GNLD_SHUTDOWN_TIMEOUT": "1s",
	}))
	if err != nil {
		t.Fatalf("run 1: %v\n%s", err, log)
	}
	// Move run 1 ten years ahead: result timestamps, run_id, file times.
	ahead := 10 * 365 * 24 * time.Hour
	msgs, _ := filepath.Glob(filepath.Join(spool, "*.msg"))
	if len(msgs) != len(files1) {
		t.Fatalf("%d results spooled, want %d", len(msgs), len(files1))
	}
	var futureRun string
	for _, m := range msgs {
		data, _ := os.ReadFile(m)
		topic, payload, _ := strings.Cut(string(data), "\n")
		var r publish.Result
		if err := json.Unmarshal([]byte(payload), &r); err != nil {
			t.Fatal(err)
		}
		r.Timestamp = r.Timestamp.Add(ahead)
		futureRun = r.Timestamp.Format("20060102T150405") + "-future"
		r.RunID = futureRun
		p, _ := json.Marshal(r)
		os.WriteFile(m, []byte(topic+"\n"+string(p)), 0o600)
		os.Chtimes(m, time.Now().Add(ahead), time.Now().Add(ahead))
	}

	// Run 2, clock back to now: a folder camera and a triggered one.
	b.Restart()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log2, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "cam=dir:" + dir2 + ",trig=dir:" + dir2, "GNLD_SPOOL_DIR": spool, "GNLD_LOG_LEVEL": "info",
		"GNLD_CAMERA_TRIG_TRIGGER": "mqtt", "GNLD_CAMERA_TRIG_LOOP": "true", "GNLD_CAMERA_TRIG_FPS": "10",
		"GNLD_EXIT_WHEN_DONE": "false",
	}))
	sub.WaitFor(t, 20*time.Second, "both runs' results", func([]testbroker.Msg) bool { return len(results(t, sub, "cam")) == 3+2 })
	c := plc(t, b)
	for _, p := range []string{`{"part_id":"past","timestamp":"1970-01-01T00:00:00Z"}`, `{"part_id":"future","timestamp":"2999-12-31T23:59:59Z"}`,
		`{"part_id":"epoch","timestamp":0}`} {
		send(t, c, "gnl/test/trig/trigger", p, false)
	}
	sub.WaitFor(t, 20*time.Second, "3 triggered results", func([]testbroker.Msg) bool { return len(results(t, sub, "trig")) == 3 })
	cancel()
	if err := wait(); err != nil {
		t.Fatalf("run 2: %v\n%s", err, log2)
	}

	rs := results(t, sub, "cam")
	for i, r := range rs {
		wantRun, wantSeq := futureRun, uint64(i+1)
		if i >= 3 {
			wantRun, wantSeq = rs[3].RunID, uint64(i-2)
		}
		if r.RunID != wantRun || r.Sequence != wantSeq {
			t.Errorf("result %d: run %s seq %d; want run %s seq %d (the spool first, in order)", i, r.RunID, r.Sequence, wantRun, wantSeq)
		}
	}
	if rs[0].Timestamp.Before(time.Now().Add(ahead / 2)) {
		t.Errorf("the spooled results' timestamps changed: %v", rs[0].Timestamp)
	}
	for i, r := range results(t, sub, "trig") {
		want := []string{"past", "future", "epoch"}[i]
		var ts any
		json.Unmarshal(r.Trigger["timestamp"], &ts)
		if r.PartID != want || ts == nil || r.LatencyMS.Trigger <= 0 || r.LatencyMS.Trigger > 5000 || time.Since(r.Timestamp) > time.Minute {
			t.Errorf("trigger %s: part %s, echoed timestamp %v, trigger latency %v ms, frame time %v", want, r.PartID, ts, r.LatencyMS.Trigger, r.Timestamp)
		}
	}
	t.Logf("spool from a clock 10 years ahead replayed first, in order; triggers from 1970 and 2999 answered in %.0f, %.0f, %.0f ms",
		results(t, sub, "trig")[0].LatencyMS.Trigger, results(t, sub, "trig")[1].LatencyMS.Trigger, results(t, sub, "trig")[2].LatencyMS.Trigger)
}

// stopStats is what gnld's stats message says as it stops.
type stopStats struct {
	MQTT    publish.Stats          `json:"mqtt"`
	Cameras map[string]cameraStats `json:"cameras"`
}

// offlineStats waits for gnld's "offline" status on device "dev" and
// returns the stats it sent last, the ones it sends as it stops.
func offlineStats(t testing.TB, sub *testbroker.Subscriber) (final stopStats) {
	t.Helper()
	sub.WaitFor(t, 10*time.Second, "offline", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status")
		return len(st) > 1 && string(st[len(st)-1].Payload) == "offline"
	})
	msgs := sub.On("/dev/stats")
	if len(msgs) == 0 || json.Unmarshal(msgs[len(msgs)-1].Payload, &final) != nil {
		t.Fatal("no final stats message")
	}
	return final
}
