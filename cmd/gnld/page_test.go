package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"gocv.io/x/gocv"

	"gnld/internal/testbroker"
	"gnld/publish"
)

// chromium finds Debian's chromium. The build root installs it
// (tools/sidroot), so inside the root a missing browser is a failure;
// elsewhere the test skips.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("SIDROOT_INSIDE") != "" {
		t.Fatal("chromium not found in the build root; tools/sidroot lists it, rebuild the root with `tools/sidroot ensure`")
	}
	t.Skip("chromium not installed (apt install chromium); `make test` runs this test inside the build root, which has it")
	return ""
}

// screenshotPath is where the page test leaves its screenshot: out/ in
// the checkout (ignored by git), or GNLD_TEST_SCREENSHOT.
func screenshotPath(t *testing.T) string {
	if p := os.Getenv("GNLD_TEST_SCREENSHOT"); p != "" {
		return p
	}
	p, err := filepath.Abs("../../out/page-test/page.png")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The technicians' page in a real browser: gnld runs the default bundle
// on a looping folder of MTD images with GNLD_HTTP_ADDR set; headless
// Chromium loads http://ADDR/, waits for a heatmap over a live frame, and
// the page must show the camera's name, a score, the threshold, the
// model version and the drift state. The screenshot's path is logged.
func TestPageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gnld and a browser; skipped with -short")
	}
	browser := chromium(t)
	dir, _ := mtdSamples(t, 4, "good", "crack")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	port := testbroker.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err, log := runGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
			"GNLD_CAMERAS": "line1=dir:" + dir, "GNLD_CAMERA_LINE1_LOOP": "true", "GNLD_CAMERA_LINE1_FPS": "4",
			"GNLD_MODEL_DIR": defaultBundle, "GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port), "GNLD_EXIT_WHEN_DONE": "false",
			"GNLD_DRIFT_WINDOW": "4", "GNLD_DRIFT_EVERY": "1", "GNLD_LOG_LEVEL": "info", "GNLD_STATS_INTERVAL": "1s",
		}))
		if err != nil {
			t.Errorf("gnld: %v\n%s", err, log)
		}
		done <- err
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, 20*time.Second, "the listener", func() bool {
		code, _ := getQuiet(base + "/api/state")
		return code == 200
	})

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 900),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, stopAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer stopAlloc()
	bctx, stopBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer stopBrowser()
	// The first call starts the browser and must not have a deadline.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("browser: %v", err)
	}
	wctx, stopTimer := context.WithTimeout(bctx, 60*time.Second)
	defer stopTimer()

	const card = `[data-camera="line1"]`
	// A heatmap loaded over a frame, and the drift window filled.
	if _, err := chromedp.Run(wctx, chromedp.Poll[bool](`(() => { const c = document.querySelector('`+card+`');
		const h = c && c.querySelector('img.heat'), f = c && c.querySelector('img.frame');
		return !!(h && f && h.complete && h.naturalWidth > 0 && f.naturalWidth > 0 &&
			/drift: (ok|warning)/.test(c.querySelector('.drift').textContent)); })()`,
		chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		failed := strings.TrimSuffix(screenshotPath(t), ".png") + "-failed.png"
		if shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)); err == nil {
			os.MkdirAll(filepath.Dir(failed), 0o755)
			os.WriteFile(failed, shot, 0o644)
		}
		t.Fatalf("no heatmap over a live frame on the page within 60 s: %v (page as it was: %s)", err, failed)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(wctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	name, score, threshold := text(card+" .name"), text(card+" .score"), text(card+" .threshold")
	model, driftBadge := text("#model"), text(card+" .drift")
	attr, err := chromedp.Run(wctx, chromedp.AttributeValue(chromedp.CSS(card), "data-frame-seq"))
	if err != nil {
		t.Fatal(err)
	}
	frameSeq := attr.Value
	chromedp.Do(wctx, chromedp.Sleep(1500*time.Millisecond)) // a few more points on the plot
	png, err := chromedp.Run(wctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := screenshotPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the page: %s", path)

	var meta struct {
		Version   string                  `json:"version"`
		Threshold struct{ Value float64 } `json:"threshold"`
	}
	raw, _ := os.ReadFile(filepath.Join(defaultBundle, "model.json"))
	json.Unmarshal(raw, &meta)
	s, err := strconv.ParseFloat(score, 64)
	if name != "line1" || err != nil || !(s > 0) {
		t.Errorf("the page shows camera %q with score %q, want line1 and a number", name, score)
	}
	if th, err := strconv.ParseFloat(threshold, 64); err != nil || fmt.Sprintf("%.3f", th) != fmt.Sprintf("%.3f", meta.Threshold.Value) {
		t.Errorf("threshold shown %q, bundle's %v", threshold, meta.Threshold.Value)
	}
	if !strings.Contains(model, meta.Version) {
		t.Errorf("model shown %q, want version %s", model, meta.Version)
	}
	if n, err := strconv.Atoi(frameSeq); err != nil || n < 1 {
		t.Errorf("frame seq %q on the card", frameSeq)
	}
	t.Logf("page: camera %s, score %s / threshold %s, %s, %s, frame %s", name, score, threshold, model, driftBadge, frameSeq)

	// The same drift state on /metrics and the stats topic.
	mf := scrape(t, base)
	if v := metric(mf, "gnld_drift_warning", "camera", "line1"); v != 0 && v != 1 {
		t.Errorf("gnld_drift_warning = %v", v)
	}
	if v := metric(mf, "gnld_drift_feature_z", "camera", "line1", "sharpness"); v == -1 {
		t.Error("no gnld_drift_feature_z for sharpness")
	}
	waitFor(t, 5*time.Second, "drift in the stats topic", func() bool {
		for _, m := range sub.On("/dev/stats") {
			var st struct {
				Cameras map[string]cameraStats `json:"cameras"`
			}
			if json.Unmarshal(m.Payload, &st) == nil && st.Cameras["line1"].Drift != nil && st.Cameras["line1"].Drift.Samples >= 4 {
				return true
			}
		}
		return false
	})
}

// A bundle without drift.json runs, with the monitor off, said once; its
// results carry no drift state.
func TestDriftOffWithoutDriftJSON(t *testing.T) {
	dir, _ := mtdSamples(t, 2, "good")
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	err, log := runGnld(t, context.Background(), baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "a=dir:" + dir + ",b=dir:" + dir, "GNLD_LOG_LEVEL": "info",
	}))
	if err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	if n := strings.Count(log, "drift monitor off: the bundle has no drift.json"); n != 1 {
		t.Errorf("%d lines say the drift monitor is off, want 1:\n%s", n, log)
	}
	sub.WaitFor(t, 10*time.Second, "4 results", func([]testbroker.Msg) bool {
		return len(results(t, sub, "a"))+len(results(t, sub, "b")) >= 4
	})
	for _, m := range sub.On("/result") {
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(m.Payload, &raw); err != nil {
			t.Fatal(err)
		}
		if _, ok := raw["drift"]; ok {
			t.Errorf("a result with the drift monitor off carries a drift state: %s", m.Payload)
		}
	}
}

// Every result carries its camera's drift state, so that a PLC acting on
// `verdict` can tell when not to trust it: "ok" over clean MTD tiles, then
// "warning" once defocused copies of them (Gaussian blur, sigma 6) have
// filled the drift window, with the warning in the log.
func TestResultsCarryTheDriftState(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the default bundle on 24 frames; skipped with -short")
	}
	dir, files := mtdSamples(t, 8, "good")
	for i, f := range files { // two defocused copies of each, named to come after the clean tiles
		img := gocv.IMRead(filepath.Join(dir, f), gocv.IMReadColor)
		if img.Empty() {
			t.Fatalf("could not read %s", f)
		}
		blurred := gocv.NewMat()
		gocv.GaussianBlur(img, &blurred, image.Pt(0, 0), 6, 6, gocv.BorderReflect101)
		for k := range 2 {
			if !gocv.IMWrite(filepath.Join(dir, fmt.Sprintf("50-blurred-%02d-%d.jpg", i, k)), blurred) {
				t.Fatal("could not write a blurred frame")
			}
		}
		img.Close()
		blurred.Close()
	}
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	err, log := runGnld(t, context.Background(), baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "line1=dir:" + dir, "GNLD_MODEL_DIR": defaultBundle,
		"GNLD_DRIFT_WINDOW": "4", "GNLD_DRIFT_EVERY": "1", "GNLD_LOG_LEVEL": "info",
	}))
	if err != nil {
		t.Fatalf("gnld: %v\n%s", err, log)
	}
	var got []publish.Result
	sub.WaitFor(t, 10*time.Second, "24 results", func([]testbroker.Msg) bool {
		got = results(t, sub, "line1")
		return len(got) >= 3*len(files)
	})
	firstWarning := uint64(0)
	for _, r := range got {
		switch {
		case r.Drift != "ok" && r.Drift != "warning":
			t.Errorf("result %d: drift %q, want ok or warning", r.Sequence, r.Drift)
		case r.Sequence <= uint64(len(files)) && r.Drift != "ok":
			t.Errorf("result %d (a clean tile): drift %q, want ok", r.Sequence, r.Drift)
		case r.Drift == "warning" && (firstWarning == 0 || r.Sequence < firstWarning):
			firstWarning = r.Sequence
		}
	}
	last := got[len(got)-1]
	if last.Drift != "warning" {
		t.Errorf("the last result (%d, defocused) has drift %q, want warning", last.Sequence, last.Drift)
	}
	if !strings.Contains(log, "drift warning") {
		t.Errorf("no drift warning in the log:\n%s", log)
	}
	t.Logf("first result with drift warning: %d of %d (the defocused tiles start at %d)", firstWarning, len(got), len(files)+1)
}

// getQuiet is GET url's status, 0 when nothing answers yet.
func getQuiet(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
