package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"gnld/calibration"
	"gnld/internal/testbroker"
	"gnld/models"
	"gnld/publish"
)

const (
	tinyFloatBundle = "../../models/testdata/tiny-float"
	defaultBundle   = "../../models/default"
	futureOpModel   = "../../models/testdata/future-op/model.tflite"
)

// syncBuffer is a log sink that gnld's goroutines write while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startGnld runs gnld in-process with env until ctx is done; wait
// returns run's error.
func startGnld(t testing.TB, ctx context.Context, env map[string]string) (log *syncBuffer, wait func() error) {
	setEnv(t, env)
	log = &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard, log) }()
	return log, func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Minute):
			t.Fatalf("gnld did not return\n%s", log)
			return nil
		}
	}
}

var hupOnce sync.Once

// sighup sends this process SIGHUP, as `systemctl reload gnld` sends gnld.
// The test's own channel keeps the signal from ending the test binary
// should gnld's handler not be installed.
func sighup(t testing.TB) {
	hupOnce.Do(func() { signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP) })
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// waitLog polls log until it holds n lines containing s.
func waitLog(t testing.TB, log *syncBuffer, s string, n int) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); strings.Count(log.String(), s) < n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d log lines with %q:\n%s", n, s, log)
		}
	}
}

// pointer is a symbolic link used as GNLD_MODEL_DIR; point retargets it
// atomically (a new link renamed over the old), as docs/OPERATE.md advises.
type pointer string

func newPointer(t testing.TB, target string) pointer {
	p := pointer(filepath.Join(t.TempDir(), "model"))
	p.point(t, target)
	return p
}

func (p pointer) point(t testing.TB, target string) {
	abs, err := filepath.Abs(target)
	if err != nil {
		t.Fatal(err)
	}
	tmp := string(p) + ".new"
	os.Remove(tmp)
	if err := os.Symlink(abs, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, string(p)); err != nil {
		t.Fatal(err)
	}
}

// editedBundle writes a bundle made of model (a .tflite path) and the
// model.json of from, with edit applied to the JSON and model_sha256 set
// to model's hash unless edit sets it.
func editedBundle(t testing.TB, from, model string, edit func(m map[string]any)) string {
	dir := t.TempDir()
	tfl, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "model.tflite"), tfl, 0o644)
	var m map[string]any
	b, _ := os.ReadFile(filepath.Join(from, models.MetaFile))
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(tfl)
	m["model_sha256"] = hex.EncodeToString(sum[:])
	if edit != nil {
		edit(m)
	}
	b, _ = json.Marshal(m)
	os.WriteFile(filepath.Join(dir, models.MetaFile), b, 0o644)
	return dir
}

// badBundle is a bundle reload must refuse, and what the refusal names.
type badBundle struct{ name, dir, want string }

func badBundles(t testing.TB) []badBundle {
	tinyModel := filepath.Join(tinyBundle, "model.tflite")
	return []badBundle{
		{"metadata: no model.json", t.TempDir(), "no bundle here"},
		{"metadata: model hash", editedBundle(t, tinyBundle, filepath.Join(tinyFloatBundle, "model.tflite"),
			func(m map[string]any) { m["model_sha256"] = strings.Repeat("0", 64) }), "SHA-256 is"},
		{"tensors: input size", editedBundle(t, tinyBundle, tinyModel,
			func(m map[string]any) { m["input"].(map[string]any)["width"] = 161 }), "input HxW"},
		{"tensors: op this TFLite lacks", editedBundle(t, tinyBundle, futureOpModel, nil), "cannot build an interpreter"},
	}
}

// expectedScores scores every file of dir with each bundle through the
// pipeline, as gnld must: version -> file -> score.
func expectedScores(t testing.TB, dir string, files []string, bundles ...string) (map[string]map[string]float32, map[string]float32) {
	scores, thresholds := map[string]map[string]float32{}, map[string]float32{}
	for _, bd := range bundles {
		b, err := models.Load(bd)
		if err != nil {
			t.Fatal(err)
		}
		var frames []gocv.Mat
		for _, f := range files {
			frames = append(frames, gocv.IMRead(filepath.Join(dir, f), gocv.IMReadColor))
		}
		v := b.Meta.Version
		scores[v] = map[string]float32{}
		for i, r := range expectedWith(t, bd, frames) {
			scores[v][files[i]] = r.Score
		}
		thresholds[v] = float32(b.Meta.Threshold.Value)
	}
	return scores, thresholds
}

func version(t testing.TB, bundle string) string {
	b, err := models.Load(bundle)
	if err != nil {
		t.Fatal(err)
	}
	return b.Meta.Version
}

func countVersion(rs []publish.Result, v string) (n int) {
	for _, r := range rs {
		if r.Model.Version == v {
			n++
		}
	}
	return n
}

// Hot swap under a live stream: two cameras loop over MTD images while
// GNLD_MODEL_DIR (a symbolic link) goes tiny -> tiny-float -> four bad
// bundles -> the default bundle, with a SIGHUP after each change. Each
// camera's results have sequence numbers 1..N, each published once; the
// model version changes exactly twice per camera, at one sequence number
// each; every score is the one the named model gives that image; each bad
// bundle is refused in one log line while the old model goes on serving.
func TestHotSwapUnderStream(t *testing.T) {
	dir, files := mtdSamples(t, 2, "good", "crack", "uneven")
	vA, vB, vC := version(t, tinyBundle), version(t, tinyFloatBundle), version(t, defaultBundle)
	want, wantThreshold := expectedScores(t, dir, files, tinyBundle, tinyFloatBundle, defaultBundle)
	bads := badBundles(t)
	link := newPointer(t, tinyBundle)

	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "a=dir:" + dir + ",b=dir:" + dir, "GNLD_MODEL_DIR": string(link),
		"GNLD_CAMERA_A_LOOP": "true", "GNLD_CAMERA_B_LOOP": "true", "GNLD_CAMERA_A_FPS": "25", "GNLD_CAMERA_B_FPS": "25",
		"GNLD_LOG_LEVEL": "info", "GNLD_CALIBRATION_DIR": filepath.Join(t.TempDir(), "none"),
		// Not under test here; generous for a machine shared with training.
		"GNLD_SHUTDOWN_TIMEOUT": "60s",
	}))
	atLeast := func(v string, n int) {
		t.Helper()
		sub.WaitFor(t, 60*time.Second, fmt.Sprintf("%d results of %s per camera", n, v), func([]testbroker.Msg) bool {
			return countVersion(results(t, sub, "a"), v) >= n && countVersion(results(t, sub, "b"), v) >= n
		})
	}
	atLeast(vA, 3)
	link.point(t, tinyFloatBundle)
	sighup(t)
	atLeast(vB, 3)
	for i, bad := range bads {
		link.point(t, bad.dir)
		sighup(t)
		waitLog(t, log, "model: reload refused", i+1)
	}
	atLeast(vB, countVersion(results(t, sub, "a"), vB)+3) // still serving after the refusals
	link.point(t, defaultBundle)
	sighup(t)
	atLeast(vC, 2)
	cancel()
	if err := wait(); err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	sub.WaitFor(t, 5*time.Second, "offline", func([]testbroker.Msg) bool {
		st := sub.On("/dev/status")
		return len(st) > 1 && string(st[len(st)-1].Payload) == "offline"
	})

	logText := log.String()
	switched := regexp.MustCompile(`msg="model: camera switched" camera=(\w+) from=(\S+) to=(\S+) .*first_seq=(\d+) pause_ms=([\d.]+)`).FindAllStringSubmatch(logText, -1)
	for _, cam := range []string{"a", "b"} {
		rs := results(t, sub, cam)
		perSeq := map[uint64]int{}
		for _, m := range sub.On("/" + cam + "/result") {
			var r publish.Result
			json.Unmarshal(m.Payload, &r)
			perSeq[r.Sequence]++
		}
		var changes []string
		for i, r := range rs {
			if r.Sequence != uint64(i+1) || perSeq[r.Sequence] != 1 {
				t.Fatalf("camera %s result %d: sequence %d published %d times; want %d once (no frame lost or scored twice)", cam, i, r.Sequence, perSeq[r.Sequence], i+1)
			}
			if ws, ok := want[r.Model.Version][r.File]; !ok || r.Score != ws || r.Threshold != wantThreshold[r.Model.Version] || r.ThresholdSource != "bundle" {
				t.Errorf("camera %s seq %d: %s scored %s %v (threshold %v %s); that model gives %v (threshold %v bundle)", cam, r.Sequence,
					r.Model.Version, r.File, r.Score, r.Threshold, r.ThresholdSource, ws, wantThreshold[r.Model.Version])
			}
			if i > 0 && r.Model.Version != rs[i-1].Model.Version {
				changes = append(changes, fmt.Sprintf("%s->%s@%d", rs[i-1].Model.Version, r.Model.Version, r.Sequence))
			}
		}
		var logged []string
		for _, m := range switched {
			if m[1] == cam {
				logged = append(logged, fmt.Sprintf("%s->%s@%s", m[2], m[3], m[4]))
			}
		}
		t.Logf("camera %s: %d results, version changes %v", cam, len(rs), changes)
		// The warm-up made the new interpreters' first invoke: the first
		// frame after a switch is not slower than the rest.
		var firstC float64
		var invC []float64
		for i, r := range rs {
			if r.Model.Version == vC {
				if rs[i-1].Model.Version != vC {
					firstC = r.LatencyMS.Invoke
				}
				invC = append(invC, r.LatencyMS.Invoke)
			}
		}
		slices.Sort(invC)
		t.Logf("camera %s: default bundle invoke, first frame after the switch %.1f ms, median of %d frames %.1f ms", cam, firstC, len(invC), invC[len(invC)/2])
		if len(changes) != 2 || !strings.HasPrefix(changes[0], vA+"->"+vB+"@") || !strings.HasPrefix(changes[1], vB+"->"+vC+"@") ||
			strings.Join(changes, " ") != strings.Join(logged, " ") {
			t.Errorf("camera %s: version changes %v, want %s->%s and %s->%s once each, as logged %v", cam, changes, vA, vB, vB, vC, logged)
		}
	}

	refused := regexp.MustCompile(`(?m)^.*model: reload refused.*$`).FindAllString(logText, -1)
	if len(refused) != len(bads) {
		t.Errorf("%d refusal lines for %d bad bundles", len(refused), len(bads))
	}
	for i, line := range refused {
		if i < len(bads) && (!strings.Contains(line, bads[i].want) || !strings.Contains(line, "serving="+vB) || !strings.Contains(line, "level=ERROR")) {
			t.Errorf("refusal of %s: %q; want an error naming %q and serving=%s", bads[i].name, line, bads[i].want, vB)
		}
	}
	reloaded := regexp.MustCompile(`msg="model: reloaded.*version=(\S+) .*load_ms=([\d.]+) build_ms=([\d.]+) warmup_ms=([\d.]+) total_ms=([\d.]+)`).FindAllStringSubmatch(logText, -1)
	if len(reloaded) != 2 {
		t.Errorf("%d reload lines, want 2", len(reloaded))
	}
	for _, m := range reloaded {
		t.Logf("swap to %s (2 cameras): load+hash %s ms, interpreters %s ms, warm-up %s ms, total %s ms", m[1], m[2], m[3], m[4], m[5])
	}
	for _, m := range switched {
		t.Logf("camera %s %s->%s at seq %s: pause between frames %s ms", m[1], m[2], m[3], m[4], m[5])
	}
}

// GNLD_MODEL_WATCH: a changed GNLD_MODEL_DIR reloads without a signal, a
// bad bundle is refused once (not again at every check), and a good one
// after it is taken.
func TestModelWatch(t *testing.T) {
	dir, _ := mtdSamples(t, 2, "good")
	vA, vB := version(t, tinyBundle), version(t, tinyFloatBundle)
	link := newPointer(t, tinyBundle)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "w=dir:" + dir, "GNLD_CAMERA_W_LOOP": "true", "GNLD_CAMERA_W_FPS": "20",
		"GNLD_MODEL_DIR": string(link), "GNLD_MODEL_WATCH": "100ms", "GNLD_LOG_LEVEL": "info",
		"GNLD_CALIBRATION_DIR": t.TempDir(),
	}))
	has := func(v string, n int) {
		t.Helper()
		sub.WaitFor(t, 30*time.Second, fmt.Sprintf("%d results of %s", n, v), func([]testbroker.Msg) bool {
			return countVersion(results(t, sub, "w"), v) >= n
		})
	}
	has(vA, 2)
	link.point(t, badBundles(t)[3].dir)
	waitLog(t, log, "model: reload refused", 1)
	time.Sleep(500 * time.Millisecond) // five more checks
	if n := strings.Count(log.String(), "model: reload refused"); n != 1 {
		t.Errorf("a bad bundle refused %d times, want once until it changes", n)
	}
	link.point(t, tinyFloatBundle)
	has(vB, 2)
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log.String(), "GNLD_MODEL_DIR changed, reloading"); n != 2 {
		t.Errorf("%d watch reloads, want 2:\n%s", n, log)
	}
}

// Calibration records are picked up on reload: camera a's own record
// applies (threshold_source calibration), camera b's _all.json record was
// made with another model and does not (bundle, with a warning), camera c
// has GNLD_CAMERA_C_THRESHOLD (config). A corrupt record makes the reload
// fail and the thresholds in force stay.
func TestCalibrationOnReload(t *testing.T) {
	dir, _ := mtdSamples(t, 3, "good")
	calDir := t.TempDir()
	tiny, err := models.Load(tinyBundle)
	if err != nil {
		t.Fatal(err)
	}
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := map[string]string{"GNLD_CAMERAS": "a=dir:" + dir + ",b=dir:" + dir + ",c=dir:" + dir,
		"GNLD_CALIBRATION_DIR": calDir, "GNLD_CAMERA_C_THRESHOLD": "2.5", "GNLD_LOG_LEVEL": "info"}
	for _, c := range []string{"A", "B", "C"} {
		env["GNLD_CAMERA_"+c+"_LOOP"], env["GNLD_CAMERA_"+c+"_FPS"] = "true", "20"
	}
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), env))
	last := func(cam string) publish.Result {
		rs := results(t, sub, cam)
		return rs[len(rs)-1]
	}
	waitFor := func(what string, ok func(a, b, c publish.Result) bool) {
		t.Helper()
		sub.WaitFor(t, 30*time.Second, what, func([]testbroker.Msg) bool {
			for _, c := range []string{"a", "b", "c"} {
				if len(results(t, sub, c)) == 0 {
					return false
				}
			}
			return ok(last("a"), last("b"), last("c"))
		})
	}
	bundleT := float32(tiny.Meta.Threshold.Value)
	waitFor("first results", func(a, b, c publish.Result) bool {
		return a.ThresholdSource == "bundle" && a.Threshold == bundleT && b.ThresholdSource == "bundle" &&
			c.ThresholdSource == "config" && c.Threshold == 2.5
	})

	// Records as gnlctl calibrate writes them, from real scores.
	var frames []gocv.Mat
	var scores []float64
	good, _ := mtdSamples(t, calibration.MinImages, "good")
	names, _ := filepath.Glob(filepath.Join(good, "*.jpg"))
	for _, n := range names {
		frames = append(frames, gocv.IMRead(n, gocv.IMReadColor))
	}
	for _, r := range expected(t, frames) {
		scores = append(scores, float64(r.Score))
	}
	m := tiny.Meta
	rule, err := calibration.RuleOf(m.Threshold)
	if err != nil {
		t.Fatal(err)
	}
	recA, err := calibration.New("a", good, scores, rule, calibration.Model{Name: m.Name, Version: m.Version, SHA256: m.ModelSHA256}, m.Threshold.Value)
	if err != nil {
		t.Fatal(err)
	}
	recAll := recA
	recAll.Camera, recAll.Model.SHA256, recAll.Model.Version = "", strings.Repeat("f", 64), "other-model"
	pathA, err := calibration.Write(calDir, recA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := calibration.Write(calDir, recAll); err != nil {
		t.Fatal(err)
	}
	sighup(t)
	waitFor("camera a on its calibration", func(a, b, c publish.Result) bool {
		return a.ThresholdSource == "calibration" && a.Threshold == float32(recA.Threshold)
	})
	if !strings.Contains(log.String(), `msg="calibration: made with another model, not used; the bundle's threshold applies until you run gnlctl calibrate again" camera=b`) {
		t.Errorf("no warning for camera b's record of another model:\n%s", log)
	}

	os.WriteFile(pathA, []byte("{"), 0o644)
	sighup(t)
	waitLog(t, log, "model: reload refused", 1)
	n := len(results(t, sub, "a"))
	waitFor("more results", func(a, b, c publish.Result) bool { return len(results(t, sub, "a")) > n+2 })
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	for _, r := range results(t, sub, "a")[n:] {
		if r.ThresholdSource != "calibration" || r.Threshold != float32(recA.Threshold) || r.Verdict != publish.Verdict(r.Score >= r.Threshold) {
			t.Fatalf("after a refused reload: %+v", r)
		}
	}
	for _, r := range results(t, sub, "b") {
		if r.ThresholdSource != "bundle" || r.Threshold != bundleT {
			t.Fatalf("camera b: %+v", r)
		}
	}
	if line := regexp.MustCompile(`(?m)^.*reload refused.*$`).FindString(log.String()); !strings.Contains(line, pathA) || !strings.Contains(line, "gnlctl calibrate again") {
		t.Errorf("refusal %q does not name %s and the fix", line, pathA)
	}
}
