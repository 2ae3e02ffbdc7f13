package web

import (
	"bufio"
	"bytes"
	"encoding/json"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"gnld/drift"
	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

// frames are real MTD images, scored by the tiny bundle through the real
// pipeline (TFLite, OpenCV).
func frames(t testing.TB) (*pipeline.Pipeline, []gocv.Mat) {
	t.Helper()
	root := os.Getenv("MTD")
	if root == "" {
		root = "../../shared/data/mtd"
	}
	files, _ := filepath.Glob(filepath.Join(root, "test", "good", "*.jpg"))
	if len(files) < 3 {
		t.Skipf("MTD test/good not found under %s; set MTD=/path/to/mtd", root)
	}
	b, err := models.Load("../models/testdata/tiny")
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(b, runtime.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	var out []gocv.Mat
	for _, f := range files[:3] {
		m := gocv.IMRead(f, gocv.IMReadColor)
		t.Cleanup(func() { m.Close() })
		out = append(out, m)
	}
	return p, out
}

// Without a browser, Observe records the score and nothing else: no
// allocation, no frame kept.
func TestObserveUnwatchedCostsNothing(t *testing.T) {
	p, imgs := frames(t)
	h := New(Model{Name: "m", Version: "v1"}, Options{})
	c := h.Camera("line1", nil)
	res, err := p.Process(imgs[0])
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	allocs := testing.AllocsPerRun(200, func() {
		seq++
		c.Observe(imgs[0], seq, time.Now(), res)
	})
	if allocs != 0 {
		t.Errorf("Observe allocates %v times per frame with no browser; want 0", allocs)
	}
	if c.snap.Load() != nil {
		t.Error("a frame was kept with no browser watching")
	}
	st := c.state(0)
	if st.Seq != seq || st.Normal+st.Anomalous != seq || len(st.History) == 0 || st.History[len(st.History)-1][2] == 0 {
		t.Errorf("state after %d frames: %+v", seq, st)
	}
}

func BenchmarkObserveUnwatched(b *testing.B) {
	p, imgs := frames(b)
	h := New(Model{}, Options{})
	c := h.Camera("line1", nil)
	res, err := p.Process(imgs[0])
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now()
	for i := 0; b.Loop(); i++ {
		c.Observe(imgs[0], uint64(i+1), at, res)
	}
}

func BenchmarkObserveWatched(b *testing.B) {
	p, imgs := frames(b)
	h := New(Model{}, Options{FrameEvery: time.Nanosecond})
	h.streams.Add(1)
	c := h.Camera("line1", nil)
	res, err := p.Process(imgs[0])
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now()
	for i := 0; b.Loop(); i++ {
		c.Observe(imgs[0], uint64(i+1), at, res)
	}
}

// event is one server-sent event.
type event struct{ name, data string }

func readEvents(t *testing.T, body io.Reader, out chan<- event) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var e event
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			e.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			e.data = strings.TrimPrefix(line, "data: ")
		case line == "" && e.name != "":
			out <- e
			e = event{}
		}
	}
	close(out)
}

// Over real HTTP: the page and its script are served; the event stream
// starts with the state, then a camera event carries a kept frame whose
// JPEG and heatmap PNG decode, at the expected sizes.
func TestPageOverHTTP(t *testing.T) {
	p, imgs := frames(t)
	h := New(Model{Name: "gnl-test", Version: "v7"}, Options{Device: "dev1", Site: "plant", Tick: 20 * time.Millisecond, FrameEvery: time.Millisecond})
	warn := drift.Status{State: drift.Warning, Score: 4.2, Feature: "sharpness", Hint: "blurrier"}
	line1 := h.Camera("line1", func() *drift.Status { return &warn })
	h.Camera("line2", nil)
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for path, want := range map[string]string{"/": "<title>gnld", "/page/app.js": "EventSource", "/page/style.css": ".camera"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %s, %d bytes, want %q in it", path, resp.Status, len(b), want)
		}
	}
	if resp, _ := http.Get(srv.URL + "/api/cameras/line1/frame.jpg"); resp.StatusCode != 404 {
		t.Errorf("frame before any was kept: %s, want 404", resp.Status)
	}
	if resp, _ := http.Get(srv.URL + "/api/cameras/nope/heatmap.png"); resp.StatusCode != 404 {
		t.Errorf("unknown camera: %s, want 404", resp.Status)
	}

	resp, err := http.Get(srv.URL + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events: Content-Type %q", ct)
	}
	events := make(chan event, 100)
	go readEvents(t, resp.Body, events)
	first := <-events
	var st State
	if first.name != "state" || json.Unmarshal([]byte(first.data), &st) != nil {
		t.Fatalf("first event %q %.200s, want the state", first.name, first.data)
	}
	if st.Model.Version != "v7" || st.Device != "dev1" || len(st.Cameras) != 2 || st.Cameras[0].Name != "line1" ||
		st.Cameras[0].Drift == nil || st.Cameras[0].Drift.State != drift.Warning || st.Cameras[1].Drift != nil || st.History != 600 {
		t.Fatalf("state %+v", st)
	}
	if !h.watched() {
		t.Fatal("an open event stream does not count as a browser watching")
	}

	// The worker scores frames while the browser watches.
	var last pipeline.Result
	var maps [][]float32
	for i, img := range imgs {
		res, err := p.Process(img)
		if err != nil {
			t.Fatal(err)
		}
		line1.Observe(img, uint64(i+1), time.Now(), res)
		last = res
		maps = append(maps, slices.Clone(res.Map))
		time.Sleep(5 * time.Millisecond)
	}
	var cs CameraState
	for deadline := time.After(5 * time.Second); cs.FrameSeq != uint64(len(imgs)); {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("event stream ended")
			}
			if e.name == "camera" {
				cs = CameraState{}
				json.Unmarshal([]byte(e.data), &cs)
			}
		case <-deadline:
			t.Fatalf("no camera event for the last frame; last %+v", cs)
		}
	}
	if cs.Name != "line1" || cs.Seq != 3 || cs.Score != round4(last.Score) || cs.Threshold != round4(last.Threshold) ||
		cs.Normal+cs.Anomalous != 3 || len(cs.History) == 0 || cs.Drift.Feature != "sharpness" {
		t.Errorf("camera event %+v", cs)
	}

	get := func(path string) (*http.Response, []byte) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	r, body := get("/api/cameras/line1/frame.jpg?seq=3")
	img, err := jpeg.Decode(bytes.NewReader(body))
	if err != nil || r.Header.Get("X-Frame-Seq") != "3" {
		t.Fatalf("frame.jpg: %s seq %s: %v", r.Status, r.Header.Get("X-Frame-Seq"), err)
	}
	w, hgt := imgs[2].Cols(), imgs[2].Rows()
	if b := img.Bounds(); max(b.Dx(), b.Dy()) != min(640, max(w, hgt)) {
		t.Errorf("frame %v from a %dx%d frame; want the longer side %d", b, w, hgt, min(640, max(w, hgt)))
	}
	r, body = get("/api/cameras/line1/heatmap.png?seq=2")
	heat, err := png.Decode(bytes.NewReader(body))
	if err != nil || r.Header.Get("X-Frame-Seq") != "2" || heat.Bounds().Dx() != last.MapW || heat.Bounds().Dy() != last.MapH {
		t.Errorf("heatmap.png?seq=2 (the kept frame before): %s seq %s %v: %v", r.Status, r.Header.Get("X-Frame-Seq"), heat, err)
	}
	// Alpha: clear up to half the threshold, opaque from 1.5 times it.
	if nrgba, ok := heat.(*image.NRGBA); !ok {
		t.Errorf("heatmap is %T, want RGBA with alpha", heat)
	} else {
		m8 := make([]byte, len(maps[1]))
		pipeline.MapTo8(m8, maps[1], last.Threshold)
		for i, v := range m8 {
			if want := byte(min(max(2*(int(v)-64), 0), 255)); nrgba.Pix[4*i+3] != want {
				t.Fatalf("heatmap pixel %d: alpha %d, want %d for map value %d", i, nrgba.Pix[4*i+3], want, v)
			}
		}
	}
	if r, _ = get("/api/cameras/line1/heatmap.png?seq=1"); r.Header.Get("X-Frame-Seq") != "3" {
		t.Errorf("a seq no longer kept must give the newest; got %s", r.Header.Get("X-Frame-Seq"))
	}
	r, body = get("/api/state")
	if err := json.Unmarshal(body, &st); err != nil || st.Cameras[0].Seq != 3 || st.Cameras[0].FrameSeq != 3 {
		t.Errorf("/api/state: %v %.300s", err, body)
	}
}

// Frame times come from the wall clock. One set back by an hour (NTP
// correcting a clock that ran ahead) starts the history afresh, so the
// plot goes on; a step back of a second merges, as within one second.
func TestHistoryClockSetBack(t *testing.T) {
	h := newHistory(600)
	t0 := time.Now().Unix()
	for i := range int64(10) {
		h.add(t0+i, 1, false)
	}
	h.add(t0+8, 3, true) // a small step back: merged into the last second
	if got := h.since(0); len(got) != 10 || got[9] != [4]float64{float64(t0 + 9), 3, 2, 1} {
		t.Fatalf("after a 1 s step back: %v", got[len(got)-1])
	}
	back := t0 + 10 - 3600
	for i := range int64(3) {
		h.add(back+i, 2, false)
	}
	got := h.since(back - 600)
	if len(got) != 3 || got[0][0] != float64(back) || got[2][0] != float64(back+2) {
		t.Errorf("after the clock was set back an hour: %v, want 3 new seconds from %d", got, back)
	}
}
