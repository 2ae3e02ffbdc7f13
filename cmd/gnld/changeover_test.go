package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gnld/internal/testbroker"
	"gnld/publish"
)

func TestParseProduct(t *testing.T) {
	for _, tc := range []struct{ payload, want, err string }{
		{"bracket-a", "bracket-a", ""},
		{"  bracket-a\n", "bracket-a", ""},
		{`{"product": "bracket-b", "order": 17}`, "bracket-b", ""},
		{"", "", ""}, // a retained message cleared
		{`{"product": 5}`, "", "not JSON"},
		{`{"order": 17}`, "", `without a "product"`},
		{`{"product": " "}`, "", `without a "product"`},
		{`{"product": "x"`, "", "not JSON"},
		{strings.Repeat("x", maxProductMessage+1), "", "bytes"},
	} {
		got, err := parseProduct([]byte(tc.payload))
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%q: %q, %v; want %q", clip([]byte(tc.payload)), got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "product")):
			t.Errorf("%q: err %v; want one containing %q that says what to send", clip([]byte(tc.payload)), err, tc.err)
		}
	}
}

// productRoot is a GNLD_MODEL_ROOT: the tiny and tiny-float bundles as
// products "tiny" and "float", and "broken" (model.json's hash does not
// match its model).
func productRoot(t *testing.T) string {
	root := t.TempDir()
	for name, src := range map[string]string{"tiny": tinyBundle, "float": tinyFloatBundle} {
		abs, _ := filepath.Abs(src)
		if err := os.Symlink(abs, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	broken := badBundles(t)[1].dir // "metadata: model hash"
	if err := os.Symlink(broken, filepath.Join(root, "broken")); err != nil {
		t.Fatal(err)
	}
	return root
}

// Two cameras with models of their own on one gnld, then product
// changeovers driven over MQTT while both stream at 25 frames/s: 100 per
// camera, each to the other product, the next sent once both cameras have
// published a result of the new one. Every result must be scored (score
// and threshold, not only the name) by the model of the product in force
// when its frame was captured: the last product sent before the capture
// time. Frames captured within `transit` after a send may still be the old
// product's (the message was on its way to gnld). Then an unknown product,
// a bundle that fails its checks and a malformed message: the first two
// stop verdicts (not_scored, with the reason), the third changes nothing,
// each is one log line and a counter, and a good product brings verdicts back.
func TestPerCameraModelsAndChangeover(t *testing.T) {
	const changeovers = 100
	const transit = 100 * time.Millisecond
	dir, files := mtdSamples(t, 2, "good", "crack")
	vTiny, vFloat := version(t, tinyBundle), version(t, tinyFloatBundle)
	want, wantThreshold := expectedScores(t, dir, files, tinyBundle, tinyFloatBundle)
	product := map[string]string{"tiny": vTiny, "float": vFloat}
	root := productRoot(t)

	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, wait := startGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "a=dir:" + dir + ",b=dir:" + dir, "GNLD_MODEL_DIR": tinyFloatBundle,
		"GNLD_CAMERA_A_MODEL": tinyBundle, "GNLD_MODEL_ROOT": root,
		"GNLD_CAMERA_A_LOOP": "true", "GNLD_CAMERA_B_LOOP": "true", "GNLD_CAMERA_A_FPS": "25", "GNLD_CAMERA_B_FPS": "25",
		"GNLD_LOG_LEVEL": "info", "GNLD_CALIBRATION_DIR": filepath.Join(t.TempDir(), "none"),
		"GNLD_STATS_INTERVAL": "1s", "GNLD_SHUTDOWN_TIMEOUT": "60s",
	}))
	waitOnline(t, sub)
	// A model per camera: each names its own.
	sub.WaitFor(t, 30*time.Second, "results of both cameras", func([]testbroker.Msg) bool {
		return countVersion(results(t, sub, "a"), vTiny) >= 3 && countVersion(results(t, sub, "b"), vFloat) >= 3
	})
	if n := countVersion(results(t, sub, "a"), vFloat) + countVersion(results(t, sub, "b"), vTiny); n != 0 {
		t.Fatalf("%d results scored by the other camera's model before any changeover", n)
	}

	// sends[camera]: each changeover's product and when it was sent.
	type sent struct {
		product string
		at      time.Time
	}
	sends := map[string][]sent{"a": {{"", time.Time{}}}, "b": {{"", time.Time{}}}}
	first := map[string]string{"a": vTiny, "b": vFloat} // before any product message
	pc := plc(t, b)
	for i := range changeovers {
		for cam, products := range map[string][2]string{"a": {"float", "tiny"}, "b": {"tiny", "float"}} {
			p := products[i%2]
			sends[cam] = append(sends[cam], sent{p, time.Now()})
			send(t, pc, "gnl/test/"+cam+"/product", p, true)
		}
		sub.WaitFor(t, 30*time.Second, fmt.Sprintf("changeover %d on both cameras", i+1), func([]testbroker.Msg) bool {
			for cam, s := range sends {
				last := s[len(s)-1]
				ok := false
				for _, r := range results(t, sub, cam) {
					ok = ok || r.Product == last.product && !r.Timestamp.Before(last.at)
				}
				if !ok {
					return false
				}
			}
			return true
		})
	}
	for cam, s := range sends {
		rs := results(t, sub, cam)
		wrong, early := 0, 0
		for _, r := range rs {
			k := 0 // the last send before the frame was captured
			for i := 1; i < len(s); i++ {
				if !r.Timestamp.Before(s[i].at) {
					k = i
				}
			}
			in := first[cam]
			if k > 0 {
				in = product[s[k].product]
			}
			ok := r.Model.Version == in
			if !ok && k > 0 && r.Timestamp.Sub(s[k].at) < transit { // still on its way: the product before may score it
				prev := first[cam]
				if k > 1 {
					prev = product[s[k-1].product]
				}
				ok = r.Model.Version == prev
				early++
			}
			if ws, known := want[r.Model.Version][r.File]; !ok || !known || r.Score != ws || r.Threshold != wantThreshold[r.Model.Version] {
				wrong++
				if wrong <= 5 {
					t.Errorf("camera %s seq %d captured %s: %s scored %s %v (threshold %v); the product in force was %q (model %s), which gives %v",
						cam, r.Sequence, r.Timestamp.Format("15:04:05.000"), r.Model.Version, r.File, r.Score, r.Threshold, s[k].product, in, ws)
				}
			}
		}
		t.Logf("camera %s: %d results over %d changeovers, %d scored by the wrong model; %d captured within %s of a send, scored by the product before",
			cam, len(rs), changeovers, wrong, early, transit)
	}
	ready := regexp.MustCompile(`msg="product changeover ready" camera=\w+ product=\S+ model=\S+ preloaded=true ready_ms=([\d.]+)`).FindAllStringSubmatch(log.String(), -1)
	if len(ready) < 2*changeovers {
		t.Errorf("%d changeovers ready from a preloaded bundle, want %d", len(ready), 2*changeovers)
	}

	// Refusals, on camera a only.
	for _, tc := range []struct{ payload, reason string }{
		{"nope", `no bundle at`}, {"broken", "SHA-256 is"}, {"../tiny", "a product name is"},
	} {
		at := time.Now()
		send(t, pc, "gnl/test/a/product", tc.payload, true)
		sub.WaitFor(t, 30*time.Second, "not_scored for "+tc.payload, func([]testbroker.Msg) bool {
			for _, r := range results(t, sub, "a") {
				if r.Verdict == publish.NotScored && !r.Timestamp.Before(at) && r.Product == tc.payload {
					if !strings.Contains(r.Reason, tc.reason) || r.Score != 0 || r.Model.Version != "" {
						t.Fatalf("not_scored result %+v: want a reason naming %q, no score, no model", r, tc.reason)
					}
					return true
				}
			}
			return false
		})
	}
	send(t, pc, "gnl/test/a/product", `{"product": 7}`, true) // malformed: changes nothing
	waitLog(t, log, "product message not understood", 1)
	at := time.Now()
	send(t, pc, "gnl/test/a/product", `{"product": "tiny"}`, true)
	sub.WaitFor(t, 30*time.Second, "verdicts again after a good product", func([]testbroker.Msg) bool {
		for _, r := range results(t, sub, "a") {
			if r.Product == "tiny" && r.Verdict != publish.NotScored && !r.Timestamp.Before(at) {
				return true
			}
		}
		return false
	})
	for _, r := range results(t, sub, "b") {
		if r.Verdict == publish.NotScored {
			t.Fatalf("camera b published not_scored (seq %d): a refusal on camera a must not touch it", r.Sequence)
		}
	}
	st := finalStats(t, sub, cancel, wait)
	ca := st["a"].Changeover
	if ca == nil || ca.Refused != 3 || ca.BadMessages != 1 || ca.Unscored == 0 || ca.Done != changeovers+1 || st["a"].Product != "tiny" {
		t.Errorf("camera a's changeover stats %+v, product %q; want 3 refused, 1 bad message, some unscored, %d done, product tiny",
			ca, st["a"].Product, changeovers+1)
	}
	logText := log.String()
	if n := strings.Count(logText, `msg="product changeover refused`); n != 3 {
		t.Errorf("%d refusal lines, want 3 (one per refused product)", n)
	}
	for _, m := range ready[:min(len(ready), 3)] {
		t.Logf("changeover to a preloaded bundle ready in %s ms", m[1])
	}
}

// BenchmarkChangeover: a camera streaming at 10 frames/s with the default
// bundle, changed over between two products (two preloaded loads of it)
// once per iteration. Reported: how long the changeover takes to be ready
// (from the message's arrival: a pipeline on the preloaded interpreters
// and one warm-up frame; make bench's target is one frame interval,
// 100 ms), the worker's pause for the switch, the time from sending the
// message to the first result of the new product, and frames scored by
// the old product although captured after the message arrived (must be 0).
func BenchmarkChangeover(b *testing.B) {
	const fps = 10.0
	dir, _ := mtdSamples(b, 3, "good")
	root := b.TempDir()
	abs, _ := filepath.Abs(defaultBundle)
	for _, p := range []string{"p1", "p2"} {
		os.Symlink(abs, filepath.Join(root, p))
	}
	br := testbroker.Start(b)
	sub := testbroker.Subscribe(b, br, "gnl/#")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, stop := startGnld(b, ctx, baseEnv(b, br.URL(), map[string]string{
		"GNLD_CAMERAS": "line=dir:" + dir, "GNLD_CAMERA_LINE_LOOP": "true", "GNLD_CAMERA_LINE_FPS": fmt.Sprint(fps),
		"GNLD_MODEL_DIR": defaultBundle, "GNLD_MODEL_ROOT": root, "GNLD_LOG_LEVEL": "info",
		"GNLD_CALIBRATION_DIR": b.TempDir(), "GNLD_SHUTDOWN_TIMEOUT": "60s",
	}))
	waitOnline(b, sub)
	pc := plc(b, br)
	var e2e []float64
	b.ResetTimer()
	for i := range b.N {
		p := []string{"p1", "p2"}[i%2]
		t0 := time.Now()
		send(b, pc, "gnl/test/line/product", p, true)
		sub.WaitFor(b, 30*time.Second, "a result of "+p, func([]testbroker.Msg) bool {
			rs := results(b, sub, "line")
			return len(rs) > 0 && rs[len(rs)-1].Product == p && !rs[len(rs)-1].Timestamp.Before(t0)
		})
		e2e = append(e2e, ms(time.Since(t0)))
	}
	b.StopTimer()
	cancel()
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	text := log.String()
	var ready, pause []float64
	for _, m := range regexp.MustCompile(`product changeover ready.* preloaded=true ready_ms=([\d.]+)`).FindAllStringSubmatch(text, -1) {
		var v float64
		fmt.Sscan(m[1], &v)
		ready = append(ready, v)
	}
	for _, m := range regexp.MustCompile(`camera switched.* why="product \S+".* pause_ms=([\d.]+)`).FindAllStringSubmatch(text, -1) {
		var v float64
		fmt.Sscan(m[1], &v)
		pause = append(pause, v)
	}
	// Frames captured after a message arrived but scored by the product before.
	arrivals := regexp.MustCompile(`time=(\S+) level=INFO msg="product message" camera=line product=(\S+)`).FindAllStringSubmatch(text, -1)
	late := 0
	rs := results(b, sub, "line")
	for _, a := range arrivals {
		at, err := time.Parse(time.RFC3339Nano, a[1])
		if err != nil {
			b.Fatalf("log time %q: %v", a[1], err)
		}
		for _, r := range rs {
			if r.Timestamp.After(at.Add(time.Millisecond)) && r.Product != a[2] && r.Timestamp.Before(at.Add(time.Second/fps)) {
				late++
			}
		}
	}
	if len(ready) < b.N || late > 0 {
		b.Fatalf("%d changeovers ready from preloaded bundles for %d messages; %d frames scored by the old product after the message", len(ready), b.N, late)
	}
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(med(ready), "ready-ms")
	b.ReportMetric(slices.Max(ready), "max-ready-ms")
	b.ReportMetric(med(pause), "pause-ms")
	b.ReportMetric(med(e2e), "e2e-ms")
	b.ReportMetric(1000/fps, "budget-ms")
	b.ReportMetric(float64(late), "late-frames")
}
