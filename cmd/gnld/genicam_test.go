package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"gnld/capture"
	"gnld/internal/testbroker"
	"gnld/publish"
)

// GigE Vision cameras (genicam: sources) end to end, against Aravis's
// camera simulator, arv-fake-gv-camera-0.8, on loopback. The simulator
// listens on 127.0.0.1:3956, so these tests run it one at a time, and
// only here (package capture's discovery test uses 127.0.0.3).
//
// The camera is named by its address: a name goes through discovery, and
// Aravis then streams through the interface that answered it first. On
// loopback that is the machine's own network interface, and as root
// Aravis reads that interface with a packet socket that never sees
// loopback traffic, so no frame arrives (gnld's service runs as its own
// user, without CAP_NET_RAW, where names work).

// fakeGigE is one arv-fake-gv-camera-0.8 on 127.0.0.1.
type fakeGigE struct {
	t      *testing.T
	bin    string
	serial string
	cmd    *exec.Cmd
	done   chan struct{}
	log    *syncBuffer
}

// startFakeGigE runs the simulator with a serial of its own and waits
// until it answers discovery; it is killed when the test ends.
func startFakeGigE(t *testing.T) *fakeGigE {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the GigE Vision camera simulator")
	}
	bin, err := exec.LookPath("arv-fake-gv-camera-0.8")
	if err != nil {
		t.Skip("arv-fake-gv-camera-0.8 (Debian aravis-tools-cli) not installed")
	}
	f := &fakeGigE{t: t, bin: bin, serial: fmt.Sprintf("GNLD%06d", time.Now().UnixNano()%1000000)}
	f.start()
	t.Cleanup(f.kill)
	return f
}

// id is the camera's Aravis device id.
func (f *fakeGigE) id() string { return "Aravis-Fake-" + f.serial }

func (f *fakeGigE) start() {
	f.t.Helper()
	f.log = &syncBuffer{}
	f.cmd = exec.Command(f.bin, "-i", "127.0.0.1", "-s", f.serial)
	f.cmd.Stdout, f.cmd.Stderr = f.log, f.log
	if err := f.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.done = make(chan struct{})
	go func() { f.cmd.Wait(); close(f.done) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		serial := gigeSerial("127.0.0.1")
		if serial == f.serial {
			return
		}
		select {
		case <-f.done:
			f.t.Fatalf("the simulator exited: %s", f.log)
		default:
		}
		if serial != "" {
			f.t.Fatalf("another GigE Vision camera (serial %s) answers on 127.0.0.1", serial)
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the simulator does not answer discovery: %s", f.log)
		}
	}
}

// kill ends the simulator as a power cut would (SIGKILL).
func (f *fakeGigE) kill() {
	f.cmd.Process.Signal(syscall.SIGKILL)
	<-f.done
}

// gigeSerial sends a GigE Vision discovery to addr and returns the serial
// number the camera there gives, or "".
func gigeSerial(addr string) string {
	c, err := net.Dial("udp4", addr+":3956")
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Write([]byte{0x42, 0x01, 0x00, 0x02, 0x00, 0x00, 0xff, 0xff}); err != nil {
		return ""
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil || n < 8+0xe8 {
		return ""
	}
	serial, _, _ := bytes.Cut(buf[8+0xd8:8+0xe8], []byte{0})
	return string(serial)
}

// gnldRun is gnld running in this process.
type gnldRun struct {
	t      *testing.T
	log    *syncBuffer
	cancel context.CancelFunc
	done   chan error
	err    error
	ended  bool
}

func startGnldRun(t *testing.T, env map[string]string) *gnldRun {
	setEnv(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	g := &gnldRun{t: t, log: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- run(ctx, nil, io.Discard, g.log) }()
	t.Cleanup(func() { g.stop() })
	return g
}

// stop cancels gnld and waits for it to return.
func (g *gnldRun) stop() error {
	if !g.ended {
		g.ended = true
		g.cancel()
		select {
		case g.err = <-g.done:
		case <-time.After(30 * time.Second):
			g.t.Fatalf("gnld did not stop:\n%s", g.log)
		}
	}
	return g.err
}

// captureWarnings returns gnld's capture log lines at level WARN or above
// about camera.
func captureWarnings(log, camera string) []string {
	var out []string
	for line := range strings.Lines(log) {
		if (strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")) && strings.Contains(line, `msg="capture:`) &&
			strings.Contains(line, " camera="+camera+" ") {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// Frames flow from the simulator through gnld to a real broker, with the
// camera's pixel format, exposure, gain and frame rate set by gnld; the
// camera is killed and started again, and gnld finds it within
// GNLD_RECONNECT_MAX + 1 s of its return.
func TestGenicamEndToEnd(t *testing.T) {
	cam := startFakeGigE(t)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	const reconnectMax = 2 * time.Second
	g := startGnldRun(t, baseEnv(t, b.URL(), map[string]string{
		"GNLD_MODEL_DIR": defaultBundle, "GNLD_CAMERAS": "gige=genicam:127.0.0.1",
		"GNLD_CAMERA_GIGE_PIXEL_FORMAT": "Mono8", "GNLD_CAMERA_GIGE_EXPOSURE_US": "2000",
		"GNLD_CAMERA_GIGE_GAIN_DB": "2", "GNLD_CAMERA_GIGE_FRAME_RATE": "10",
		"GNLD_READ_TIMEOUT": "1s", "GNLD_RECONNECT_MIN": "250ms", "GNLD_RECONNECT_MAX": reconnectMax.String(),
		"GNLD_LOG_LEVEL": "info", "GNLD_STATS_INTERVAL": "1s",
	}))
	start := time.Now()
	sub.WaitFor(t, 30*time.Second, "results from the GigE Vision camera", func([]testbroker.Msg) bool {
		return len(results(t, sub, "gige")) >= 5
	})
	t.Logf("5 results %s after start", time.Since(start).Round(time.Millisecond))
	for _, r := range results(t, sub, "gige") {
		if r.Camera != "gige" || r.Model.SHA256 == "" || r.Verdict == "" || r.LatencyMS.Invoke <= 0 {
			t.Fatalf("result %+v", r)
		}
	}
	// The settings reached the camera (arv-tool reads while gnld holds it).
	if arv, err := exec.LookPath("arv-tool-0.8"); err == nil {
		out, _ := exec.Command(arv, "-n", "127.0.0.1", "control", "PixelFormat", "ExposureTimeAbs", "GainRaw", "AcquisitionFrameRate").CombinedOutput()
		for _, want := range []string{"PixelFormat = Mono8", "ExposureTimeAbs = 2000 ", "GainRaw = 2 ", "AcquisitionFrameRate = 10 "} {
			if !strings.Contains(string(out), want) {
				t.Errorf("camera features: want %q in\n%s", want, out)
			}
		}
	}

	// Power cut: the camera is gone for long enough that the reconnect
	// backoff reaches its cap (250 ms, 0.5 s, 1 s, 2 s).
	cam.kill()
	killed := time.Now()
	waitFor(t, 10*time.Second, "gnld to see the camera gone", func() bool {
		return strings.Contains(g.log.String(), "capture: source failed")
	})
	t.Logf("gnld saw the camera gone after %s", time.Since(killed).Round(time.Millisecond))
	time.Sleep(5*time.Second - time.Since(killed))
	cam.start()
	back := time.Now()
	var first time.Duration
	waitFor(t, 20*time.Second, "results after the camera's return", func() bool {
		for _, r := range results(t, sub, "gige") {
			if r.Timestamp.After(back) {
				first = time.Since(back)
				t.Logf("first result after the return: frame read %s after it, result here %s after it",
					r.Timestamp.Sub(back).Round(time.Millisecond), first.Round(time.Millisecond))
				return true
			}
		}
		return false
	})
	if first > reconnectMax+time.Second {
		t.Errorf("results resumed %s after the camera came back; want within GNLD_RECONNECT_MAX + 1 s = %s\n%s",
			first.Round(time.Millisecond), reconnectMax+time.Second, g.log)
	}
	n := len(results(t, sub, "gige"))
	sub.WaitFor(t, 10*time.Second, "more results", func([]testbroker.Msg) bool { return len(results(t, sub, "gige")) >= n+3 })
	if err := g.stop(); err != nil {
		t.Fatalf("gnld: %v\n%s", err, g.log)
	}
	final := offlineStats(t, sub)
	st := final.Cameras["gige"]
	t.Logf("stats: %d frames, %d scored, %d reconnects, %d stalls, %d refused", st.Frames, st.Processed, st.Reconnects, st.Stalls, st.Refused)
	log := g.log.String()
	if st.Reconnects < 2 || st.Refused != 0 || !strings.Contains(log, `msg="capture: source back" camera=gige`) {
		t.Errorf("want reconnects, no refusals and one 'source back' line:\n%s", log)
	}
	if w := captureWarnings(log, "gige"); len(w) != 1 || !strings.Contains(w[0], "capture: source failed") {
		t.Errorf("want one warning for the outage, got %d:\n%s", len(w), strings.Join(w, "\n"))
	}
}

// A camera that is missing, and one that refuses a setting, each give one
// log line that names the problem, are retried and counted, and nothing
// else stops: a second camera goes on. A Bayer camera's frames are
// demosaiced and scored.
func TestGenicamMissingAndRefused(t *testing.T) {
	cam := startFakeGigE(t)
	_, arvErr := exec.LookPath("arv-tool-0.8")
	dir := t.TempDir()
	for i := range 3 {
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(60*i), 128, 200, 0), 96, 128, gocv.MatTypeCV8UC3)
		gocv.IMWrite(filepath.Join(dir, fmt.Sprintf("%d.png", i)), m)
		m.Close()
	}
	for _, tc := range []struct {
		name, source string
		env          map[string]string
		want         string // in the one warning; "": none, results arrive
		arvTool      bool   // needs arv-tool-0.8
	}{
		{"missing", "genicam:Aravis-Fake-NOSUCH", nil,
			`camera \"Aravis-Fake-NOSUCH\": not found: no GigE Vision camera answers discovery with that id, user name, vendor-serial, MAC or address within 500ms, and no USB3 Vision camera is attached (GigE Vision cameras that answered: ` + cam.id() + ` (127.0.0.1)`, false},
		{"exposure", "genicam:127.0.0.1", map[string]string{"GNLD_CAMERA_CAM_EXPOSURE_US": "5"},
			`camera \"127.0.0.1\" refuses EXPOSURE_US=5 (GNLD_CAMERA_<NAME>_EXPOSURE_US): ExposureTimeAbs takes 10 to 1e+07 µs`, true},
		{"pixel format", "genicam:" + cam.id(), map[string]string{"GNLD_CAMERA_CAM_PIXEL_FORMAT": "YUV422_8_UYVY"},
			`camera \"` + cam.id() + `\" refuses PIXEL_FORMAT=YUV422_8_UYVY (GNLD_CAMERA_<NAME>_PIXEL_FORMAT): the camera offers Mono16, RGB8, Mono8, BayerRG8, BayerGR8, BayerGB8, BayerBG8`, true},
		{"frame rate", "genicam:127.0.0.1", map[string]string{"GNLD_CAMERA_CAM_FRAME_RATE": "5000"},
			`refuses FRAME_RATE=5000 (GNLD_CAMERA_<NAME>_FRAME_RATE): AcquisitionFrameRate takes 0.1 to 1000 Hz`, true},
		{"bayer", "genicam:127.0.0.1", map[string]string{"GNLD_CAMERA_CAM_PIXEL_FORMAT": "BayerRG8", "GNLD_CAMERA_CAM_FRAME_RATE": "10"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.arvTool && arvErr != nil {
				t.Skip("arv-tool-0.8 not installed: gnld cannot read the camera's bounds")
			}
			b := testbroker.Start(t)
			sub := testbroker.Subscribe(t, b, "gnl/#")
			env := map[string]string{
				"GNLD_CAMERAS": "cam=" + tc.source + ",ok=dir:" + dir, "GNLD_CAMERA_OK_LOOP": "true", "GNLD_CAMERA_OK_FPS": "10",
				"GNLD_RECONNECT_MIN": "100ms", "GNLD_RECONNECT_MAX": "400ms", "GNLD_READ_TIMEOUT": "2s",
				"GNLD_LOG_LEVEL": "info", "GNLD_STATS_INTERVAL": "1s",
			}
			for k, v := range tc.env {
				env[k] = v
			}
			g := startGnldRun(t, baseEnv(t, b.URL(), env))
			time.Sleep(3 * time.Second)
			if err := g.stop(); err != nil {
				t.Fatalf("gnld: %v\n%s", err, g.log)
			}
			final := offlineStats(t, sub)
			st, ok := final.Cameras["cam"], final.Cameras["ok"]
			log := g.log.String()
			t.Logf("cam: %d frames, %d reconnects, %d refused; ok: %d scored", st.Frames, st.Reconnects, st.Refused, ok.Processed)
			if ok.Processed < 10 {
				t.Errorf("the other camera scored %d frames in 3 s; it must go on", ok.Processed)
			}
			w := captureWarnings(log, "cam")
			if tc.want == "" {
				if len(w) != 0 || len(results(t, sub, "cam")) < 5 || st.Refused != 0 {
					t.Errorf("%d results, %d refused; want results and no warning:\n%s", len(results(t, sub, "cam")), st.Refused, log)
				}
				return
			}
			if len(w) != 1 || !strings.Contains(w[0], tc.want) {
				t.Errorf("want one warning containing\n%s\ngot %d:\n%s", tc.want, len(w), strings.Join(w, "\n"))
			} else {
				t.Log(w[0])
			}
			if st.Reconnects < 3 || st.Frames != 0 || (st.Refused >= 3) != tc.arvTool {
				t.Errorf("stats %+v: want retries, no frames and refusals counted only for a refused setting", st)
			}
		})
	}
}

func TestGenicamConfig(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_EXPOSURE_US": "100"},
			`GNLD_CAMERA_A_EXPOSURE_US="100": expected unset: only genicam: sources (GigE Vision and USB3 Vision cameras) take camera settings; this camera's source is dir`},
		{map[string]string{"GNLD_CAMERAS": "a=/dev/video0", "GNLD_CAMERA_A_GAIN_DB": "0"}, `GNLD_CAMERA_A_GAIN_DB="0": expected unset: only genicam: sources`},
		{map[string]string{"GNLD_CAMERAS": "a=genicam:cam", "GNLD_CAMERA_A_PIXEL_FORMAT": "Mono12"},
			`GNLD_CAMERA_A_PIXEL_FORMAT="Mono12": expected empty (the camera's) or one of Mono8, Mono16, RGB8, YUV422_8_UYVY, YUV422_8, BayerRG8, BayerGR8, BayerGB8, BayerBG8`},
		{map[string]string{"GNLD_CAMERAS": "a=genicam:cam", "GNLD_CAMERA_A_GAIN_DB": "-3"}, `GNLD_CAMERA_A_GAIN_DB="-3": expected unset (the camera's) or a gain of 0 to 500 dB`},
		{map[string]string{"GNLD_CAMERAS": "a=genicam:cam", "GNLD_CAMERA_A_EXPOSURE_US": "-1"}, `GNLD_CAMERA_A_EXPOSURE_US="-1": expected 0 (the camera's) or an exposure time`},
		{map[string]string{"GNLD_CAMERAS": "a=genicam:cam", "GNLD_CAMERA_A_FRAME_RATE": "fast"}, `GNLD_CAMERA_A_FRAME_RATE="fast": expected a number`},
		{map[string]string{"GNLD_CAMERAS": "a=genicam:cam", "GNLD_CAMERA_A_FRAME_RATE": "NaN"}, `GNLD_CAMERA_A_FRAME_RATE="NaN": expected 0 (the camera's) or a frame rate`},
		{map[string]string{"GNLD_CAMERAS": "a=genicam:"}, `GNLD_CAMERAS: camera a: source "genicam:": expected genicam:<camera id> (arv-tool-0.8 lists them): empty camera id`},
		{map[string]string{"GNLD_CAMERAS": "a", "GNLD_CAMERA_A_SOURCE": `genicam:x"y`}, `camera id "x\"y": character '"' not allowed`},
	} {
		setEnv(t, tc.env)
		err := run(context.Background(), nil, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("env %v:\n got %v\nwant one line containing %s", tc.env, err, tc.want)
		}
	}
	setEnv(t, map[string]string{
		"GNLD_CAMERAS": "top=genicam:Basler-40012345", "GNLD_CAMERA_TOP_PIXEL_FORMAT": "BayerRG8", "GNLD_CAMERA_TOP_EXPOSURE_US": "1500.5",
		"GNLD_CAMERA_TOP_GAIN_DB": "0", "GNLD_CAMERA_TOP_FRAME_RATE": "29.97", "GNLD_CAMERA_TOP_TRIGGER": "mqtt",
	})
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.captureConfig(0)
	want := capture.Genicam{PixelFormat: "BayerRG8", ExposureUS: 1500.5, FrameRate: 29.97}
	if c.Source.Kind != capture.KindGenicam || c.Source.Target != "Basler-40012345" || !c.Live || c.Genicam.GainDB == nil || *c.Genicam.GainDB != 0 {
		t.Fatalf("capture config %+v", c)
	}
	c.Genicam.GainDB = nil
	if c.Genicam != want {
		t.Errorf("genicam settings %+v, want %+v", c.Genicam, want)
	}
	var st cameraStats
	if b, _ := json.Marshal(st); strings.Contains(string(b), "refused") {
		t.Errorf("refused is in the stats of a camera that is not genicam: %s", b)
	}
}

// triggerResults decodes all of camera's results in arrival order (a
// trigger answered without a frame has no sequence number, so results
// cannot be told apart by it).
func triggerResults(t *testing.T, sub *testbroker.Subscriber, camera string) []publish.Result {
	var out []publish.Result
	for _, m := range sub.On("/" + camera + "/result") {
		var r publish.Result
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatalf("result %q: %v", m.Payload, err)
		}
		out = append(out, r)
	}
	return out
}

// Trigger mode on a GigE Vision camera: gnld sets the simulator to
// software trigger, and each trigger a PLC sends fires it: N triggers give
// exactly N frames (sequence 1..N, no frame without a trigger) and N
// results, each with its part id; with no trigger, no frame for seconds.
// A trigger while the camera is away is answered at once as not_scored;
// the camera, killed and started again, is found within
// GNLD_RECONNECT_MAX + 1 s of its return.
func TestGenicamTrigger(t *testing.T) {
	cam := startFakeGigE(t)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	p := plc(t, b)
	const reconnectMax = 2 * time.Second
	g := startGnldRun(t, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "gige=genicam:127.0.0.1", "GNLD_CAMERA_GIGE_TRIGGER": "mqtt",
		"GNLD_CAMERA_GIGE_PIXEL_FORMAT": "BayerRG8", "GNLD_CAMERA_GIGE_EXPOSURE_US": "2000",
		"GNLD_READ_TIMEOUT": "2s", "GNLD_RECONNECT_MIN": "250ms", "GNLD_RECONNECT_MAX": reconnectMax.String(),
		"GNLD_LOG_LEVEL": "info", "GNLD_STATS_INTERVAL": "1s",
	}))
	waitOnline(t, sub)
	lastStats := func() cameraStats {
		var st stopStats
		msgs := sub.On("/dev/stats")
		if len(msgs) == 0 || json.Unmarshal(msgs[len(msgs)-1].Payload, &st) != nil {
			return cameraStats{}
		}
		return st.Cameras["gige"]
	}
	// No trigger, no frame: the camera is open and waits.
	time.Sleep(4 * time.Second)
	if st := lastStats(); st.Frames != 0 || st.Untriggered != 0 || st.Reconnects != 0 || len(triggerResults(t, sub, "gige")) != 0 {
		t.Fatalf("before any trigger: stats %+v, %d results; want none:\n%s", st, len(triggerResults(t, sub, "gige")), g.log)
	}
	if arv, err := exec.LookPath("arv-tool-0.8"); err == nil {
		out, _ := exec.Command(arv, "-n", "127.0.0.1", "control", "TriggerSelector", "TriggerMode", "TriggerSource", "PixelFormat").CombinedOutput()
		t.Logf("the camera's features while gnld holds it:\n%s", out)
		for _, want := range []string{"TriggerMode = On", "TriggerSource = Software", "PixelFormat = BayerRG8"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("camera features: want %q in\n%s", want, out)
			}
		}
	}

	const n = 10
	start := time.Now()
	for i := range n {
		send(t, p, "gnl/test/gige/trigger", fmt.Sprintf(`{"part_id":"part-%d","station":7}`, i+1), false)
		if i%3 != 2 { // every third follows the one before at once: queued
			time.Sleep(150 * time.Millisecond)
		}
	}
	waitFor(t, 20*time.Second, "a result for each trigger", func() bool { return len(triggerResults(t, sub, "gige")) >= n })
	t.Logf("%d results %s after the first trigger", n, time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second) // no trigger: no frame, no result
	got := triggerResults(t, sub, "gige")
	if len(got) != n {
		t.Fatalf("%d results for %d triggers", len(got), n)
	}
	var lat []string
	for i, r := range got {
		if r.PartID != fmt.Sprintf("part-%d", i+1) || r.Sequence != uint64(i+1) || r.Verdict == publish.NotScored ||
			string(r.Trigger["station"]) != "7" || r.LatencyMS.Trigger <= 0 {
			t.Errorf("result %d: %+v; want part-%d, sequence %d, scored", i, r, i+1, i+1)
		}
		lat = append(lat, fmt.Sprintf("%.0f", r.LatencyMS.Trigger))
	}
	t.Logf("trigger-to-result latency (ms): %s", strings.Join(lat, " "))
	if st := lastStats(); st.Frames != n || st.Untriggered != 0 || st.Reconnects != 0 || st.Trigger == nil || st.Trigger.NotScored != 0 {
		t.Errorf("after %d triggers and 3 s without: stats %+v trigger %+v; want %d frames, none untriggered", n, st, st.Trigger, n)
	}

	// Power cut: a trigger while the camera is away is answered at once,
	// as not scored; after its return triggers give frames again.
	cam.kill()
	killed := time.Now()
	waitFor(t, 10*time.Second, "gnld to see the camera gone", func() bool {
		return strings.Contains(g.log.String(), "capture: source failed")
	})
	t.Logf("gnld saw the camera gone after %s", time.Since(killed).Round(time.Millisecond))
	sent := time.Now()
	send(t, p, "gnl/test/gige/trigger", "away-1", false)
	waitFor(t, 5*time.Second, "the answer to a trigger while the camera is away", func() bool {
		return len(triggerResults(t, sub, "gige")) > n
	})
	away := triggerResults(t, sub, "gige")[n]
	t.Logf("answer while away, %s after the trigger: %s", time.Since(sent).Round(time.Millisecond), away.Reason)
	if away.PartID != "away-1" || away.Verdict != publish.NotScored || away.Sequence != 0 || !strings.Contains(away.Reason, "not connected") {
		t.Errorf("answer while away: %+v", away)
	}
	time.Sleep(5*time.Second - time.Since(killed))
	cam.start()
	back := time.Now()
	var first time.Duration
	answered := n + 1
	for k := 1; first == 0; k++ {
		if time.Since(back) > 15*time.Second {
			t.Fatalf("no scored result 15 s after the camera came back:\n%s", g.log)
		}
		send(t, p, "gnl/test/gige/trigger", fmt.Sprintf("back-%d", k), false)
		waitFor(t, 5*time.Second, "an answer", func() bool { return len(triggerResults(t, sub, "gige")) > answered })
		answered++
		if r := triggerResults(t, sub, "gige")[answered-1]; r.Verdict != publish.NotScored {
			first = time.Since(back)
			t.Logf("first scored result %s after the return (trigger back-%d, sequence %d)", first.Round(time.Millisecond), k, r.Sequence)
			if r.PartID != fmt.Sprintf("back-%d", k) || r.Sequence != n+1 {
				t.Errorf("first result after the return: %+v; want back-%d, sequence %d", r, k, n+1)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if first > reconnectMax+time.Second {
		t.Errorf("results resumed %s after the camera came back; want within GNLD_RECONNECT_MAX + 1 s = %s\n%s",
			first.Round(time.Millisecond), reconnectMax+time.Second, g.log)
	}
	if err := g.stop(); err != nil {
		t.Fatalf("gnld: %v\n%s", err, g.log)
	}
	st := offlineStats(t, sub).Cameras["gige"]
	tr := st.Trigger
	t.Logf("stats: %d frames, %d scored, %d reconnects, %d stalls, %d untriggered; trigger %+v", st.Frames, st.Processed, st.Reconnects, st.Stalls, st.Untriggered, *tr)
	// After the restart the camera may send a frame that no trigger asked
	// for (seen once in 8 runs, under a loaded CI machine: a GVCP command
	// repeated, or a frame owed to a trigger that timed out). gnld must
	// discard it and count it as untriggered, never hand it on: frames
	// and scored results stay one per answered trigger.
	for _, r := range triggerResults(t, sub, "gige")[n:] {
		if r.Verdict == publish.NotScored {
			t.Logf("not scored: %s: %s", r.PartID, r.Reason)
		}
	}
	if tr.Received != uint64(answered) || tr.Answered != tr.Received || tr.Unanswered != 0 || tr.NoFrame != uint64(answered-n-1) ||
		st.Frames != n+1 || st.Processed != n+1 || st.Refused != 0 {
		t.Errorf("final stats %+v trigger %+v; want every trigger answered, one frame for each scored one\n%s", st, tr, g.log)
	}
	if st.Untriggered > 0 {
		t.Logf("%d frames without a trigger after the restart, discarded", st.Untriggered)
	}
	w := captureWarnings(g.log.String(), "gige")
	if len(w) == 2 && st.Untriggered > 0 && strings.Contains(w[1], "without a trigger") {
		w = w[:1] // the untriggered frame's warning
	}
	if len(w) != 1 || !strings.Contains(w[0], "capture: source failed") {
		t.Errorf("want one warning for the outage, got %d:\n%s", len(w), strings.Join(w, "\n"))
	} else {
		t.Log(w[0])
	}
}
