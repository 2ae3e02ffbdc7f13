package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"gnld/internal/testbroker"
	"gnld/models"
	"gnld/pipeline"
	"gnld/publish"
	"gnld/runtime"
)

var update = flag.Bool("update", false, "rewrite docs/CONFIG.md's variable tables")

const (
	tinyBundle = "../../models/testdata/tiny"
	configDoc  = "../../docs/CONFIG.md"
	beginMark  = "<!-- BEGIN GENERATED: go test ./cmd/gnld -run TestConfigDoc -update -->\n"
	endMark    = "<!-- END GENERATED -->\n"
)

// TestConfigDoc keeps docs/CONFIG.md equal to the struct tags.
func TestConfigDoc(t *testing.T) {
	var table bytes.Buffer
	if err := writeDoc(&table, docTable); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok1 := strings.Cut(string(doc), beginMark)
	_, tail, ok2 := strings.Cut(rest, endMark)
	if !ok1 || !ok2 {
		t.Fatalf("%s lacks the generated-section markers", configDoc)
	}
	want := head + beginMark + table.String() + endMark + tail
	if want == string(doc) {
		return
	}
	if *update {
		os.WriteFile(configDoc, []byte(want), 0o644)
		return
	}
	t.Errorf("%s is out of date with the config struct tags: go test ./cmd/gnld -run TestConfigDoc -update", configDoc)
}

// setEnv replaces every GNLD_ variable of the process with env, so that a
// developer's own GNLD_ settings cannot leak into a test.
func setEnv(t testing.TB, env map[string]string) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, prefix+"_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "required key GNLD_CAMERAS missing value"},
		{map[string]string{"GNLD_CAMERAS": "Line1=dir:/x"}, `GNLD_CAMERAS="Line1=dir:/x": camera name "Line1": expected lower-case letters, digits and _`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_THREDS": "2"}, "unknown environment variable GNLD_THREDS"},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_THRESOLD": "2"}, "unknown environment variable GNLD_CAMERA_A_THRESOLD"},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_B_ROTATE": "90"}, "unknown environment variable GNLD_CAMERA_B_ROTATE"},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_THREADS": "two"}, `GNLD_THREADS="two": expected a whole number`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_MQTT_QOS": "3"}, `GNLD_MQTT_QOS="3": expected 0, 1 or 2`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_SHUTDOWN_TIMEOUT": "soon"}, `GNLD_SHUTDOWN_TIMEOUT="soon": expected a duration such as 500ms, 10s or 2m`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_MAP": "jpeg"}, `GNLD_MAP="jpeg": expected off, png or raw`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_DELEGATE": "xnnpak"}, `GNLD_DELEGATE="xnnpak": expected xnnpack, builtin, gpu or the path of a TFLite delegate plugin .so`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_LOG_LEVEL": "loud"}, `GNLD_LOG_LEVEL="loud": expected debug, info, warn or error`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_ROI": "1,2,3"}, `GNLD_CAMERA_A_ROI="1,2,3": expected X,Y,W,H`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_ROTATE": "45"}, `GNLD_CAMERA_A_ROTATE="45": expected 0, 90, 180 or 270`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_THRESHOLD": "-1"}, `GNLD_CAMERA_A_THRESHOLD="-1": expected a number above 0`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_LIVE": "maybe"}, `GNLD_CAMERA_A_LIVE="maybe": expected true or false`},
		{map[string]string{"GNLD_CAMERAS": "a"}, `GNLD_CAMERA_A_SOURCE="": expected a source`},
		{map[string]string{"GNLD_CAMERAS": "a=ftp://x"}, `GNLD_CAMERAS: camera a: source "ftp://x": unknown scheme`},
		{map[string]string{"GNLD_CAMERAS": "a=/dev/video0", "GNLD_CAMERA_A_LOOP": "true"}, `GNLD_CAMERA_A_LOOP="true": expected false for a device`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_TRIGGER": "plc"}, `GNLD_CAMERA_A_TRIGGER="plc": expected off or mqtt`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CAMERA_A_TRIGER": "mqtt"}, "unknown environment variable GNLD_CAMERA_A_TRIGER"},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_TRIGGER_QUEUE": "0"}, `GNLD_TRIGGER_QUEUE="0": expected 1 to 10000`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_MODEL_WATCH": "-1s"}, `GNLD_MODEL_WATCH="-1s": expected 0 (off) or a duration`},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_CALIBRATON_DIR": "/c"}, "unknown environment variable GNLD_CALIBRATON_DIR"},
		{map[string]string{"GNLD_CAMERAS": "a=dir:/x", "GNLD_HTTP_ADDR": "9464"}, `GNLD_HTTP_ADDR="9464": expected HOST:PORT such as :9464`},
	} {
		setEnv(t, tc.env)
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), nil, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("env %v:\n got %v\nwant one line containing %s", tc.env, err, tc.want)
		}
	}
}

func TestConfigPerCamera(t *testing.T) {
	setEnv(t, map[string]string{
		"GNLD_CAMERAS":            "a=dir:/x,b",
		"GNLD_CAMERA_B_SOURCE":    "gst:videotestsrc ! video/x-raw,width=64,height=48 ! appsink",
		"GNLD_CAMERA_A_ROI":       "10,20,100,50",
		"GNLD_CAMERA_A_THRESHOLD": "1.5",
		"GNLD_CAMERA_A_ROTATE":    "270",
		"GNLD_CAMERA_B_LIVE":      "false",
		"GNLD_DEVICE":             "dev1",
		"GNLD_MQTT_RECONNECT_MAX": "1s",
		"GNLD_CAMERA_A_FPS":       "2.5",
		"GNLD_CAMERA_A_LOOP":      "true",
		"GNLD_STATS_INTERVAL":     "0",
		"GNLD_EXIT_WHEN_DONE":     "false",
		"GNLD_MQTT_CLIENT_ID":     "",
		"GNLD_CAMERA_B_ROI":       "",
		"GNLD_CAMERA_B_ROTATE":    "0",
		"GNLD_CAMERA_B_FPS":       "0",
		"GNLD_CAMERA_B_LOOP":      "false",
		"GNLD_SHUTDOWN_TIMEOUT":   "3s",
		"GNLD_READ_TIMEOUT":       "2s",
		"GNLD_MAP":                "raw",
		"GNLD_LOG_LEVEL":          "debug",
		"GNLD_SPOOL_MAX":          "5",
		"GNLD_MQTT_QOS":           "0",
		"GNLD_MQTT_TIMEOUT":       "1s",
		"GNLD_SITE":               "plant",
		"GNLD_THREADS":            "2",
		"GNLD_DELEGATE":           "",
		"GNLD_LOG_FORMAT":         "json",
		"GNLD_MODEL_DIR":          "/m",
		"GNLD_SPOOL_DIR":          "/s",
		"GNLD_RECONNECT_MIN":      "10ms",
		"GNLD_RECONNECT_MAX":      "20ms",
		"GNLD_MQTT_BROKER":        "tcp://b:1883",
		"GNLD_MQTT_USERNAME":      "u",
		"GNLD_MQTT_PASSWORD":      "p",
		"GNLD_MQTT_CA_FILE":       "",
		"GNLD_MQTT_CERT_FILE":     "",
		"GNLD_MQTT_KEY_FILE":      "",
		"GNLD_CAMERA_A_SOURCE":    "",
	})
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.captureConfig(0), cfg.captureConfig(1)
	if a.ROI.String() != "(10,20)-(110,70)" || a.Rotate != 270 || a.Live || !a.Loop || a.FPS != 2.5 || *cfg.cameras[0].Threshold != 1.5 {
		t.Errorf("camera a: %+v", a)
	}
	if b.Source.Kind != "gst" || b.Live || cfg.cameras[1].Threshold != nil {
		t.Errorf("camera b: %+v", b)
	}
	if cfg.MQTTClientID != "gnld-dev1" {
		t.Errorf("client id %q", cfg.MQTTClientID)
	}
}

// Every variable in the example env file, commented out or not, is a
// gnld variable with a valid value.
func TestEnvExample(t *testing.T) {
	b, err := os.ReadFile("../../systemd/gnld.env.example")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "#"), "=")
		if ok && strings.HasPrefix(k, prefix+"_") {
			env[k] = v
		}
	}
	if len(env) < 20 {
		t.Fatalf("only %d variables found", len(env))
	}
	setEnv(t, env)
	if _, err := loadConfig(); err != nil {
		t.Error(err)
	}
}

func TestBundleErrors(t *testing.T) {
	corrupt := t.TempDir()
	for _, f := range []string{"model.json", "model.tflite"} {
		b, _ := os.ReadFile(filepath.Join(tinyBundle, f))
		if f == "model.json" {
			b = b[:len(b)/2]
		}
		os.WriteFile(filepath.Join(corrupt, f), b, 0o644)
	}
	for _, tc := range []struct{ dir, want string }{
		{"/nonexistent/bundle", "/nonexistent/bundle/model.json"},
		{corrupt, filepath.Join(corrupt, "model.json") + ": not valid JSON"},
	} {
		setEnv(t, map[string]string{
			"GNLD_CAMERAS": "a=dir:/x", "GNLD_MODEL_DIR": tc.dir, "GNLD_SPOOL_DIR": t.TempDir(),
		})
		err := run(context.Background(), nil, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "GNLD_MODEL_DIR") {
			t.Errorf("bundle %s: got %v, want an error naming %s", tc.dir, err, tc.want)
		}
	}
}

// mtdSamples copies the first n images of each MTD test class into one
// folder, named so that name order alternates nothing: class, then file.
func mtdSamples(t testing.TB, n int, classes ...string) (dir string, files []string) {
	root := os.Getenv("MTD")
	if root == "" {
		root = "../../../shared/data/mtd"
	}
	dir = t.TempDir()
	for ci, class := range classes {
		names, err := filepath.Glob(filepath.Join(root, "test", class, "*.jpg"))
		if err != nil || len(names) < n {
			t.Skipf("MTD test/%s not found under %s", class, root)
		}
		slices.Sort(names)
		for i, src := range names[:n] {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%02d-%s-%02d.jpg", ci, class, i)
			os.WriteFile(filepath.Join(dir, name), b, 0o644)
			files = append(files, name)
		}
	}
	return dir, files
}

// expected scores frames with the pipeline directly, as gnld should.
func expected(t testing.TB, frames []gocv.Mat) []pipeline.Result {
	return expectedWith(t, tinyBundle, frames)
}

// expectedWith scores frames with bundle's pipeline and closes them.
func expectedWith(t testing.TB, bundle string, frames []gocv.Mat) []pipeline.Result {
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(b, runtime.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var out []pipeline.Result
	for _, f := range frames {
		r, err := p.Process(f)
		if err != nil {
			t.Fatal(err)
		}
		r.Map = nil // aliases the pipeline's buffer
		out = append(out, r)
		f.Close()
	}
	return out
}

// results decodes the result messages of camera, de-duplicated by run,
// camera and sequence, in arrival order.
func results(t testing.TB, sub *testbroker.Subscriber, camera string) []publish.Result {
	seen := map[string]bool{}
	var out []publish.Result
	for _, m := range sub.On("/" + camera + "/result") {
		var r publish.Result
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatalf("result %q: %v", m.Payload, err)
		}
		key := fmt.Sprint(r.RunID, r.Camera, r.Sequence)
		if !seen[key] {
			seen[key] = true
			out = append(out, r)
		}
	}
	return out
}

// baseEnv is a gnld environment for tests: the tiny bundle, a test
// broker, a temporary spool, fast timeouts.
func baseEnv(t testing.TB, broker string, extra map[string]string) map[string]string {
	env := map[string]string{
		"GNLD_MODEL_DIR": tinyBundle, "GNLD_MQTT_BROKER": broker, "GNLD_SITE": "test", "GNLD_DEVICE": "dev",
		"GNLD_SPOOL_DIR": filepath.Join(t.TempDir(), "spool"), "GNLD_MQTT_TIMEOUT": "1s",
		"GNLD_MQTT_RECONNECT_MAX": "500ms", "GNLD_RECONNECT_MIN": "50ms", "GNLD_RECONNECT_MAX": "200ms",
		"GNLD_STATS_INTERVAL": "0", "GNLD_SHUTDOWN_TIMEOUT": "10s", "GNLD_LOG_LEVEL": "debug",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// runGnld runs gnld in-process with env and returns its error and log.
func runGnld(t *testing.T, ctx context.Context, env map[string]string) (error, string) {
	setEnv(t, env)
	var log bytes.Buffer
	err := run(ctx, nil, io.Discard, &log)
	return err, log.String()
}

// One image-folder camera and one video-file camera (MTD images encoded
// by ffmpeg) in one process: one result per frame, in order, with the
// scores and verdicts the pipeline gives for those frames.
func TestEndToEndFolderAndVideo(t *testing.T) {
	dir, files := mtdSamples(t, 3, "good", "crack", "blowhole")
	clip := filepath.Join(t.TempDir(), "line.mkv")
	ff := exec.Command("ffmpeg", "-v", "error", "-pattern_type", "glob", "-framerate", "5", "-i", filepath.Join(dir, "*.jpg"),
		"-vf", "scale=256:256", "-c:v", "ffv1", "-pix_fmt", "bgr0", clip)
	if out, err := ff.CombinedOutput(); err != nil {
		t.Skipf("ffmpeg: %v %s", err, out)
	}
	// A corrupt image: skipped and counted, without a sequence number.
	os.WriteFile(filepath.Join(dir, "99-corrupt.jpg"), []byte("\xff\xd8 not really"), 0o644)
	var imgs, vframes []gocv.Mat
	for _, f := range files {
		imgs = append(imgs, gocv.IMRead(filepath.Join(dir, f), gocv.IMReadColor))
	}
	vc, err := gocv.VideoCaptureFile(clip)
	if err != nil {
		t.Fatal(err)
	}
	for {
		m := gocv.NewMat()
		if !vc.Read(&m) {
			m.Close()
			break
		}
		vframes = append(vframes, m)
	}
	vc.Close()
	wantImg, wantVid := expected(t, imgs), expected(t, vframes)
	if len(wantVid) != len(files) {
		t.Fatalf("video has %d frames, want %d", len(wantVid), len(files))
	}

	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	start := time.Now()
	err, log := runGnld(t, context.Background(), baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "folder=dir:" + dir + ",video=file:" + clip, "GNLD_MAP": "png", "GNLD_STATS_INTERVAL": "1m",
	}))
	if err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	t.Logf("gnld ran %d + %d frames in %s", len(files), len(vframes), time.Since(start).Round(time.Millisecond))
	sub.WaitFor(t, 5*time.Second, "all results", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status") // "offline" comes last, after the final stats
		return len(results(t, sub, "folder")) == len(files) && len(results(t, sub, "video")) == len(files) &&
			len(st) > 1 && string(st[len(st)-1].Payload) == "offline"
	})
	check := func(camera string, want []pipeline.Result, files []string) {
		got := results(t, sub, camera)
		for i, r := range got {
			if r.Sequence != uint64(i+1) || r.Score != want[i].Score || r.Threshold != want[i].Threshold ||
				r.Verdict != publish.Verdict(want[i].Anomalous) || r.File != files[i] ||
				r.Model.SHA256 == "" || r.LatencyMS.Invoke <= 0 {
				t.Errorf("%s result %d: %+v; want score %v verdict %v file %s", camera, i, r, want[i].Score, want[i].Anomalous, files[i])
			}
		}
	}
	check("folder", wantImg, files)
	check("video", wantVid, slices.Repeat([]string{"line.mkv"}, len(files)))
	if maps := sub.On("/folder/map"); len(maps) != len(files) || !bytes.HasPrefix(maps[0].Payload, []byte("\x89PNG")) {
		t.Errorf("%d maps, want %d PNGs", len(maps), len(files))
	}
	if !strings.Contains(log, `msg=frame camera=folder seq=1 file=00-good-00.jpg score=`) {
		t.Errorf("no per-frame debug line in the log:\n%s", log)
	}
	var stats struct {
		Cameras map[string]cameraStats `json:"cameras"`
	}
	if msgs := sub.On("/dev/stats"); len(msgs) == 0 || json.Unmarshal(msgs[len(msgs)-1].Payload, &stats) != nil {
		t.Errorf("no final stats message")
	} else if f := stats.Cameras["folder"]; f.Bad != 1 || f.Frames != uint64(len(files)) || f.Processed != f.Frames {
		t.Errorf("folder stats %+v: want %d frames processed, 1 bad", f, len(files))
	}
}

// The broker is down when gnld starts and restarted several times while it
// runs; gnld is itself restarted with results in its spool. The subscriber
// ends with every result of both runs once after de-duplication, in order.
func TestBrokerOutagesAndRestartLoseNothing(t *testing.T) {
	dir1, files1 := mtdSamples(t, 4, "good", "fray")
	dir2, files2 := mtdSamples(t, 20, "good", "break")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	b.Stop()
	spool := filepath.Join(t.TempDir(), "spool")

	// Run 1: broker unreachable from start to end. gnld still finishes
	// its folder, spools every result and exits cleanly.
	env := baseEnv(t, b.URL(), map[string]string{"GNLD_CAMERAS": "cam=dir:" + dir1, "GNLD_SPOOL_DIR": spool, "GNLD_SHUTDOWN_TIMEOUT": "1s"})
	err, log := runGnld(t, context.Background(), env)
	if err != nil || !strings.Contains(log, "broker not reachable at start-up") {
		t.Fatalf("run 1: %v\n%s", err, log)
	}
	if left, _ := filepath.Glob(filepath.Join(spool, "*.msg")); len(left) != len(files1) {
		t.Fatalf("spool holds %d results, want %d", len(left), len(files1))
	}

	// Run 2: broker back, then bounced three times while 40 frames go by
	// at 15 fps.
	b.Restart()
	env = baseEnv(t, b.URL(), map[string]string{"GNLD_CAMERAS": "cam=dir:" + dir2, "GNLD_SPOOL_DIR": spool, "GNLD_CAMERA_CAM_FPS": "15"})
	done := make(chan string, 1)
	start := time.Now()
	go func() {
		err, log := runGnld(t, context.Background(), env)
		if err != nil {
			t.Errorf("run 2: %v", err)
		}
		done <- log
	}()
	for range 3 {
		time.Sleep(500 * time.Millisecond)
		b.Stop()
		time.Sleep(300 * time.Millisecond)
		b.Restart()
	}
	log = <-done
	t.Logf("run 2 took %s", time.Since(start).Round(time.Millisecond))
	// Wait for every result; what is missing, if any, the checks below say.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if len(results(t, sub, "cam")) >= len(files1)+len(files2) {
			break
		}
	}
	got := results(t, sub, "cam")
	runs := map[string][]publish.Result{}
	var order []string
	for _, r := range got {
		if runs[r.RunID] == nil {
			order = append(order, r.RunID)
		}
		runs[r.RunID] = append(runs[r.RunID], r)
	}
	for _, id := range order {
		var seqs []uint64
		for _, r := range runs[id] {
			seqs = append(seqs, r.Sequence)
		}
		t.Logf("run %s: sequences %v", id, seqs)
	}
	if len(order) != 2 {
		t.Fatalf("results of %d runs, want 2", len(order))
	}
	for i, want := range [][]string{files1, files2} {
		rs := runs[order[i]]
		if len(rs) != len(want) {
			t.Errorf("run %d: %d results, want %d", i+1, len(rs), len(want))
			continue
		}
		for j, r := range rs {
			if r.Sequence != uint64(j+1) || r.File != want[j] {
				t.Errorf("run %d result %d: seq %d file %s, want %d %s", i+1, j, r.Sequence, r.File, j+1, want[j])
			}
		}
	}
	t.Logf("%d result messages for %d results; disconnect log lines: %d", len(sub.On("/cam/result")), len(got),
		strings.Count(log, "connection lost"))
	if strings.Count(log, "mqtt: connection lost") < 2 || strings.Count(log, "level=ERROR") > 0 {
		t.Errorf("want one warning per outage and no errors:\n%s", log)
	}
}

// buildGnld builds the real binary once per test run.
func buildGnld(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "gnld")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// environ is os.Environ without GNLD_ variables, plus env.
func environ(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix+"_") {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// The real binary: SIGHUP reloads the model without a gap; SIGTERM stops
// it within the shutdown timeout with status 0, every captured frame
// published (no gaps) and "offline" last;
// a missing bundle or a bad variable exits 1 with one line on stderr.
func TestBinarySignalsAndExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir, _ := mtdSamples(t, 3, "good")
	bin := buildGnld(t)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")

	env := baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "loop=dir:" + dir, "GNLD_CAMERA_LOOP_LOOP": "true", "GNLD_CAMERA_LOOP_FPS": "30",
		"GNLD_LOG_LEVEL": "info", "GNLD_SHUTDOWN_TIMEOUT": "5s",
	})
	cmd := exec.Command(bin)
	cmd.Env = environ(env)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sub.WaitFor(t, 10*time.Second, "some results", func([]testbroker.Msg) bool { return len(sub.On("/loop/result")) >= 10 })
	// SIGHUP reloads the model (the same bundle here) and gnld goes on.
	cmd.Process.Signal(syscall.SIGHUP)
	n := len(sub.On("/loop/result"))
	sub.WaitFor(t, 10*time.Second, "results after SIGHUP", func([]testbroker.Msg) bool { return len(sub.On("/loop/result")) >= n+10 })
	cmd.Process.Signal(syscall.SIGTERM)
	stopped := time.Now()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
	}
	t.Logf("stopped %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	// "offline" is the last message gnld sends: once it is here, so is
	// every result.
	sub.WaitFor(t, 5*time.Second, "offline", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status")
		return len(st) > 1 && string(st[len(st)-1].Payload) == "offline"
	})
	got := results(t, sub, "loop")
	for i, r := range got {
		if r.Sequence != uint64(i+1) {
			t.Fatalf("result %d has sequence %d: a frame in flight was lost", i, r.Sequence)
		}
	}
	t.Logf("%d results, sequences 1..%d without gaps", len(got), len(got))
	if !strings.Contains(stderr.String(), `msg="model: reloaded`) || strings.Count(stderr.String(), `msg="model: camera switched"`) != 1 {
		t.Errorf("SIGHUP: want one reload and one camera switch in the log:\n%s", stderr.String())
	}

	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"GNLD_CAMERAS": "a=dir:" + dir, "GNLD_MODEL_DIR": "/nonexistent"}, "gnld: model bundle (GNLD_MODEL_DIR=/nonexistent): /nonexistent/model.json"},
		{map[string]string{"GNLD_CAMERAS": "a=dir:" + dir, "GNLD_MQTT_QOS": "x"}, `gnld: GNLD_MQTT_QOS="x": expected a whole number`},
	} {
		cmd := exec.Command(bin)
		cmd.Env = environ(tc.env)
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.HasPrefix(string(out), tc.want) || bytes.Count(out, []byte("\n")) != 1 {
			t.Errorf("exit %d (%v), output %q; want 1 and one line starting %q", code, err, out, tc.want)
		}
	}
}
