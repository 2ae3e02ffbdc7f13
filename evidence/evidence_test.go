package evidence

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

// Frames are real OpenCV Mats, the files real files in a temporary folder.

// noise is a w x h frame of uniform random BGR noise: JPEG cannot shrink it.
func noise(t testing.TB, w, h int) gocv.Mat {
	t.Helper()
	m := gocv.NewMatWithSize(h, w, gocv.MatTypeCV8UC3)
	t.Cleanup(func() { m.Close() })
	gocv.RandU(&m, gocv.NewScalar(0, 0, 0, 0), gocv.NewScalar(256, 256, 256, 0))
	return m
}

// smooth is a w x h frame of noise blown up from a 40 x 32 one: more like a
// camera's picture, quick to encode.
func smooth(t testing.TB, w, h int) gocv.Mat {
	t.Helper()
	small := noise(t, 40, 32)
	m := gocv.NewMat()
	t.Cleanup(func() { m.Close() })
	gocv.Resize(small, &m, image.Pt(w, h), 0, 0, gocv.InterpolationCubic)
	return m
}

// ramp is a w x h map rising from 0 to 2 (twice a threshold of 1).
func ramp(w, h int) []float32 {
	m := make([]float32, w*h)
	for i := range m {
		m[i] = 2 * float32(i) / float32(len(m))
	}
	return m
}

var base = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)

func rec(camera string, at time.Time, seq uint64, anomalous bool) Record {
	return Record{
		Camera: camera, Time: at, Seq: seq, Anomalous: anomalous, Score: 0.5, Threshold: 1,
		Model: "v1", Drift: "ok", Result: json.RawMessage(fmt.Sprintf(`{"sequence":%d}`, seq)),
	}
}

func open(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	s, err := Open(cfg, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// put offers r once the queue has room, and wants it queued.
func put(t testing.TB, s *Store, r Record, frame gocv.Mat, amap []float32, mw, mh int) {
	t.Helper()
	waitRoom(s)
	if !s.Offer(r, frame, amap, mw, mh) {
		t.Fatalf("Offer(%s #%d) = false; %+v", r.Camera, r.Seq, s.Stats())
	}
}

func waitRoom(s *Store) {
	for len(s.queue) == cap(s.queue) {
		time.Sleep(100 * time.Microsecond)
	}
}

// diskBytes is the size of the regular files under dir.
func diskBytes(t *testing.T, dir string) (n int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		n += info.Size()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ids(recs []Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

func TestOfferKeepsAnomalousAndEveryNthNormal(t *testing.T) {
	s := open(t, Config{MaxBytes: 1 << 30, NormalEvery: 3, Queue: 64})
	frame, amap := noise(t, 32, 24), ramp(8, 8)
	// Per camera: normal results 3 and 6 are kept, anomalous ones always.
	steps := []struct {
		camera    string
		anomalous bool
		kept      bool
	}{
		{"a", false, false}, {"b", false, false}, {"a", false, false}, {"a", true, true},
		{"b", false, false}, {"a", false, true}, {"b", false, true}, {"a", false, false},
		{"a", false, false}, {"a", false, true}, {"b", true, true}, {"a", false, false},
	}
	for i, st := range steps {
		got := s.Offer(rec(st.camera, base.Add(time.Duration(i)*time.Second), uint64(i+1), st.anomalous), frame, amap, 8, 8)
		if got != st.kept {
			t.Errorf("step %d (%s, anomalous %v): Offer = %v, want %v", i, st.camera, st.anomalous, got, st.kept)
		}
	}
	// Refused: camera names that are not filename-safe, unusable frames or maps.
	for _, cam := range []string{"", "../x", "a/b", "a b", "a.b"} {
		if s.Offer(rec(cam, base, 100, true), frame, amap, 8, 8) {
			t.Errorf("camera %q kept", cam)
		}
	}
	grey32 := gocv.NewMatWithSize(24, 32, gocv.MatTypeCV32F)
	defer grey32.Close()
	if s.Offer(rec("a", base, 101, true), grey32, amap, 8, 8) {
		t.Error("a 32-bit float frame kept")
	}
	if s.Offer(rec("a", base, 102, true), frame, amap, 8, 9) {
		t.Error("a map of the wrong length kept")
	}
	s.Close()
	st := s.Stats()
	if st.Kept != 5 || st.Records != 5 || st.Rejected != 7 || st.Dropped != 0 || st.WriteErrors != 0 {
		t.Errorf("stats %+v; want 5 kept and written, 7 rejected", st)
	}
	// Without NormalEvery no normal result is kept.
	s2 := open(t, Config{MaxBytes: 1 << 30})
	for i := range 10 {
		if s2.Offer(rec("a", base, uint64(i+1), false), frame, amap, 8, 8) {
			t.Fatal("a normal result kept with NormalEvery 0")
		}
	}
}

func TestFilesIndexAndQueries(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30, NormalEvery: 1, Queue: 64})
	frame, amap := noise(t, 64, 48), ramp(16, 16)
	// 12 records a minute apart: cameras line1/line2 alternating, every
	// third anomalous, part ids p0..p3.
	for i := range 12 {
		r := rec([]string{"line1", "line2"}[i%2], base.Add(time.Duration(i)*time.Minute), uint64(i+1), i%3 == 0)
		r.PartID = fmt.Sprintf("p%d", i%4)
		put(t, s, r, frame, amap, 16, 16)
	}
	s.Close()
	all := s.List(Query{})
	if len(all) != 12 {
		t.Fatalf("%d records, want 12", len(all))
	}
	for i, r := range all { // newest first
		if want := base.Add(time.Duration(11-i) * time.Minute); !r.Time.Equal(want) || r.Seq != uint64(12-i) {
			t.Errorf("record %d: %s, seq %d; want %s, seq %d", i, r.Time, r.Seq, want, 12-i)
		}
	}
	r := all[0]
	if want := "line2-20250301T101100.000-12"; r.ID != want {
		t.Errorf("id %q, want %q", r.ID, want)
	}
	if string(r.Result) != `{"sequence":12}` || r.PartID != "p3" || r.Model != "v1" || r.Drift != "ok" {
		t.Errorf("record %+v", r)
	}
	// The files: the frame at full size, the heat map with alpha at the map's size.
	day := filepath.Join(dir, "line2", "2025-03-01")
	jpg := gocv.IMRead(filepath.Join(day, r.ID+".jpg"), gocv.IMReadUnchanged)
	defer jpg.Close()
	png := gocv.IMRead(filepath.Join(day, r.ID+".png"), gocv.IMReadUnchanged)
	defer png.Close()
	if jpg.Cols() != 64 || jpg.Rows() != 48 || jpg.Channels() != 3 {
		t.Errorf("frame %dx%d, %d channels; want 64x48 BGR", jpg.Cols(), jpg.Rows(), jpg.Channels())
	}
	if png.Cols() != 16 || png.Rows() != 16 || png.Channels() != 4 {
		t.Errorf("heat map %dx%d, %d channels; want 16x16 BGRA", png.Cols(), png.Rows(), png.Channels())
	}
	if p, err := s.FramePath(r.ID); err != nil || p != filepath.Join(day, r.ID+".jpg") {
		t.Errorf("FramePath = %q, %v", p, err)
	}
	if p, err := s.HeatmapPath(r.ID); err != nil || p != filepath.Join(day, r.ID+".png") {
		t.Errorf("HeatmapPath = %q, %v", p, err)
	}
	var onDisk Record
	if data, err := os.ReadFile(filepath.Join(day, r.ID+".json")); err != nil || json.Unmarshal(data, &onDisk) != nil || onDisk.ID != r.ID {
		t.Errorf("%s.json: %v, %+v", r.ID, err, onDisk)
	}
	if got := diskBytes(t, dir); got != s.Stats().Bytes {
		t.Errorf("Stats.Bytes %d, files %d", s.Stats().Bytes, got)
	}

	// The index rebuilt by Open is the same.
	s = open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	if got := s.List(Query{}); !slices.EqualFunc(got, all, func(a, b Record) bool {
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		return string(ja) == string(jb)
	}) {
		t.Errorf("after reopening:\n%v\nbefore:\n%v", ids(got), ids(all))
	}
	if got, ok := s.Get(r.ID); !ok || got.ID != r.ID || !got.Time.Equal(r.Time) {
		t.Errorf("Get(%s) = %+v, %v", r.ID, got, ok)
	}
	if _, ok := s.Get("line1-nothing"); ok {
		t.Error("Get of an unknown id found something")
	}
	s.Mark(all[2].ID, Mark{Kind: MarkFalseAlarm, By: "ana"}) // seq 10
	s.Mark(all[5].ID, Mark{Kind: MarkDefect, By: "ben"})     // seq 7

	seqs := func(q Query) (out []uint64) {
		for _, r := range s.List(q) {
			out = append(out, r.Seq)
		}
		return out
	}
	for _, c := range []struct {
		name string
		q    Query
		want []uint64
	}{
		{"camera", Query{Camera: "line1"}, []uint64{11, 9, 7, 5, 3, 1}},
		{"time range", Query{From: base.Add(3 * time.Minute), To: base.Add(6 * time.Minute)}, []uint64{6, 5, 4}},
		{"anomalous", Query{Verdict: "anomalous"}, []uint64{10, 7, 4, 1}},
		{"normal, line2", Query{Verdict: "normal", Camera: "line2"}, []uint64{12, 8, 6, 2}},
		{"part id", Query{PartID: "p1"}, []uint64{10, 6, 2}},
		{"false alarm", Query{Marked: MarkFalseAlarm}, []uint64{10}},
		{"defect", Query{Marked: MarkDefect}, []uint64{7}},
		{"marked", Query{Marked: "marked"}, []uint64{10, 7}},
		{"unmarked, limit", Query{Marked: "unmarked", Limit: 3}, []uint64{12, 11, 9}},
		{"limit", Query{Limit: 2}, []uint64{12, 11}},
		{"none", Query{Camera: "line3"}, nil},
		{"invalid verdict", Query{Verdict: "bad"}, nil},
	} {
		if got := seqs(c.q); !slices.Equal(got, c.want) {
			t.Errorf("%s: seqs %v, want %v", c.name, got, c.want)
		}
	}
}

func TestMarkPersistsAndIDsAreChecked(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	frame := noise(t, 32, 24)
	put(t, s, rec("line1", base, 1, true), frame, nil, 0, 0) // no map: no heat map
	put(t, s, rec("line1", base.Add(time.Second), 2, true), frame, ramp(8, 8), 8, 8)
	s.Close()
	recs := s.List(Query{})
	id := recs[1].ID
	if _, err := s.HeatmapPath(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("HeatmapPath of a record without a map: %v", err)
	}
	at := time.Date(2025, 3, 2, 8, 30, 0, 0, time.FixedZone("CET", 3600))
	got, err := s.Mark(id, Mark{Kind: MarkFalseAlarm, By: " ana ", At: at, Note: "dust on the lens"})
	if err != nil || got.Mark == nil || got.Mark.By != "ana" || !got.Mark.At.Equal(at) {
		t.Fatalf("Mark = %+v, %v", got, err)
	}
	if _, err := s.Mark(recs[0].ID, Mark{Kind: MarkDefect, By: "ben"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id   string
		m    Mark
		want error
	}{
		{"../x", Mark{Kind: MarkDefect, By: "ana"}, ErrInvalid},
		{"", Mark{Kind: MarkDefect, By: "ana"}, ErrInvalid},
		{"..", Mark{Kind: MarkDefect, By: "ana"}, ErrInvalid},
		{"line1/../../etc", Mark{Kind: MarkDefect, By: "ana"}, ErrInvalid},
		{id, Mark{Kind: "good", By: "ana"}, ErrInvalid},
		{id, Mark{Kind: MarkDefect, By: "  "}, ErrInvalid},
		{"line1-20250301T100000.000-99", Mark{Kind: MarkDefect, By: "ana"}, ErrNotFound},
	} {
		if _, err := s.Mark(c.id, c.m); !errors.Is(err, c.want) {
			t.Errorf("Mark(%q, %+v): %v, want %v", c.id, c.m, err, c.want)
		}
	}
	for _, bad := range []string{"../x", "", "..", "a/b", `a\b`, ".hidden"} {
		if _, err := s.FramePath(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("FramePath(%q): %v, want ErrInvalid", bad, err)
		}
		if _, err := s.HeatmapPath(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("HeatmapPath(%q): %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := s.FramePath("line1-nothing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("FramePath of an unknown id: %v", err)
	}

	s = open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	r, ok := s.Get(id)
	if !ok || r.Mark == nil {
		t.Fatalf("after reopening: %+v, %v", r, ok)
	}
	if m := *r.Mark; m.Kind != MarkFalseAlarm || m.By != "ana" || !m.At.Equal(at) || m.Note != "dust on the lens" {
		t.Errorf("mark after reopening: %+v", m)
	}
	if got := ids(s.List(Query{Marked: MarkDefect})); !slices.Equal(got, []string{recs[0].ID}) {
		t.Errorf("defects after reopening: %v", got)
	}
	// The caller's copy is its own.
	r.Mark.Kind = MarkDefect
	if r2, _ := s.Get(id); r2.Mark.Kind != MarkFalseAlarm {
		t.Error("changing a returned record changed the store's")
	}
	if got := diskBytes(t, dir); got != s.Stats().Bytes {
		t.Errorf("Stats.Bytes %d, files %d", s.Stats().Bytes, got)
	}
}

// The 24-hour-equivalent run: ten times the store's size is
// written; the store never holds more than MaxBytes, and removes the
// oldest first.
func TestSizeBound(t *testing.T) {
	const max = 4 << 20
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: max, NormalEvery: 1})
	frame, amap := noise(t, 640, 480), ramp(64, 64)
	put(t, s, rec("line1", base, 1, false), frame, amap, 64, 64)
	for s.Stats().Records == 0 {
		time.Sleep(time.Millisecond)
	}
	size := s.Stats().Bytes
	if size < 300_000 {
		t.Fatalf("a record of a 640x480 noise frame takes %d bytes; want it big", size)
	}
	n := int(10*max/size) + 1
	for i := 2; i <= n; i++ {
		put(t, s, rec([]string{"line1", "line2"}[i%2], base.Add(time.Duration(i)*time.Second), uint64(i), i%5 == 0), frame, amap, 64, 64)
		if b := s.Stats().Bytes; b > max {
			t.Fatalf("after %d records: %d bytes, over %d", i, b, max)
		}
	}
	s.Close()
	st := s.Stats()
	disk := diskBytes(t, dir)
	t.Logf("%d records of %d bytes written (%.1fx MaxBytes): %d kept (%d bytes on disk), %d removed",
		n, size, float64(int64(n)*size)/max, st.Records, disk, st.Removed)
	if disk > max || st.Bytes != disk {
		t.Errorf("%d bytes on disk (Stats.Bytes %d); want at most %d", disk, st.Bytes, max)
	}
	if st.Removed == 0 || int(st.Removed)+st.Records != n || st.WriteErrors != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v after %d records", st, n)
	}
	for i, r := range s.List(Query{}) { // the newest are left
		if r.Seq != uint64(n-i) {
			t.Fatalf("record %d is #%d, want #%d: the oldest must go first", i, r.Seq, n-i)
		}
	}
	// Reopened with a smaller bound, the store shrinks at once.
	s = open(t, Config{Dir: dir, MaxBytes: max / 2})
	if st := s.Stats(); st.Bytes > max/2 || st.Removed == 0 || diskBytes(t, dir) != st.Bytes {
		t.Errorf("reopened with MaxBytes %d: %+v, %d bytes on disk", max/2, st, diskBytes(t, dir))
	}
}

func TestAgeBound(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30, MaxAge: time.Hour})
	frame, amap := noise(t, 64, 48), ramp(8, 8)
	now := time.Now()
	for i, age := range []time.Duration{2 * time.Hour, 90 * time.Minute, 30 * time.Minute, 20 * time.Minute, time.Minute} {
		put(t, s, rec("line1", now.Add(-age), uint64(i+1), true), frame, amap, 8, 8)
	}
	s.Close()
	if st := s.Stats(); st.Records != 3 || st.Removed != 2 {
		t.Errorf("MaxAge 1h: %+v; want 3 records, 2 removed", st)
	}
	// Reopened with a shorter MaxAge, the older records go.
	s = open(t, Config{Dir: dir, MaxBytes: 1 << 30, MaxAge: 10 * time.Minute})
	st := s.Stats()
	if got := s.List(Query{}); st.Records != 1 || st.Removed != 2 || len(got) != 1 || got[0].Seq != 5 {
		t.Errorf("MaxAge 10m: %+v, %v", st, ids(got))
	}
	if disk := diskBytes(t, dir); disk != st.Bytes {
		t.Errorf("%d bytes on disk, Stats.Bytes %d", disk, st.Bytes)
	}
}

func TestOfferNeverBlocks(t *testing.T) {
	s := open(t, Config{MaxBytes: 1 << 30, Queue: 1})
	frame, amap := noise(t, 640, 480), ramp(256, 256)
	offer := func(n int) (slowest, total time.Duration) {
		start := time.Now()
		for i := range n {
			t0 := time.Now()
			s.Offer(rec("line1", base.Add(time.Duration(i)*time.Millisecond), uint64(i+1), true), frame, amap, 256, 256)
			slowest = max(slowest, time.Since(t0))
		}
		return slowest, time.Since(start)
	}
	// A writer stalled (a slow disk, here the index lock held): the queue
	// fills and Offer drops at once.
	s.mu.Lock()
	slowest, total := offer(500)
	s.mu.Unlock()
	st := s.Stats()
	t.Logf("writer stalled: 500 offers in %v, slowest %v; %+v", total, slowest, st)
	if st.Kept > 2 || st.Kept+st.Dropped != 500 || total > time.Second {
		t.Errorf("writer stalled: 500 offers in %v; %+v", total, st)
	}
	// A writer that runs, slower than the offers (a 30 ms frame period
	// would leave it time): for 300 ms (or until one is kept, on a busy
	// machine) some are kept, most dropped, none waits for the writer.
	before, n := st, 0
	slowest = 0
	for start := time.Now(); time.Since(start) < 300*time.Millisecond ||
		s.kept.Load() == before.Kept && time.Since(start) < 10*time.Second; n++ {
		t0 := time.Now()
		s.Offer(rec("line1", base.Add(time.Duration(n)*time.Millisecond), uint64(n+1), true), frame, amap, 256, 256)
		slowest = max(slowest, time.Since(t0))
	}
	st = s.Stats()
	t.Logf("writer running: %d offers, slowest %v; %+v", n, slowest, st)
	if st.Kept == before.Kept || st.Dropped == before.Dropped || st.Kept+st.Dropped != uint64(500+n) {
		t.Errorf("writer running: %d offers; %+v", n, st)
	}
	s.Close()
	if st := s.Stats(); uint64(st.Records) != st.Kept {
		t.Errorf("after Close: %+v; every queued record written", st)
	}
}

// Offer copies the frame and the map: the caller's buffers change at once.
func TestOfferCopies(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	frame := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(200, 200, 200, 0), 48, 64, gocv.MatTypeCV8UC3)
	defer frame.Close()
	amap := make([]float32, 16*16)
	for i := range amap {
		amap[i] = 2 // twice the threshold: opaque
	}
	s.mu.Lock() // hold the writer until the buffers are overwritten
	ok := s.Offer(rec("line1", base, 1, true), frame, amap, 16, 16)
	frame.SetTo(gocv.NewScalar(0, 0, 0, 0))
	clear(amap)
	s.mu.Unlock()
	if !ok {
		t.Fatal("not kept")
	}
	s.Close()
	r := s.List(Query{})[0]
	jpgPath, _ := s.FramePath(r.ID)
	pngPath, _ := s.HeatmapPath(r.ID)
	jpg := gocv.IMRead(jpgPath, gocv.IMReadGrayScale)
	defer jpg.Close()
	png := gocv.IMRead(pngPath, gocv.IMReadUnchanged)
	defer png.Close()
	if m := jpg.Mean().Val1; m < 190 {
		t.Errorf("stored frame's mean %.0f, want 200: the caller's frame was not copied", m)
	}
	if a := png.Mean().Val4; a < 250 {
		t.Errorf("stored heat map's alpha %.0f, want 255: the caller's map was not copied", a)
	}
}

func TestExport(t *testing.T) {
	s := open(t, Config{MaxBytes: 1 << 30})
	frame, amap := noise(t, 64, 48), ramp(8, 8)
	for i := range 6 {
		r := rec("line1", base.Add(time.Duration(i)*time.Minute), uint64(i+1), true)
		r.PartID = fmt.Sprintf("p%d", i%2)
		put(t, s, r, frame, amap, 8, 8)
	}
	s.Close()
	recs := s.List(Query{}) // #6 .. #1
	if _, err := s.Mark(recs[0].ID, Mark{Kind: MarkFalseAlarm, By: "ana"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mark(recs[3].ID, Mark{Kind: MarkDefect, By: "ben"}); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "export")
	n, err := s.Export(Query{From: base.Add(time.Minute)}, out)
	if err != nil || n != 5 {
		t.Fatalf("Export = %d, %v; want 5", n, err)
	}
	for _, r := range recs[:5] {
		for _, ext := range []string{".jpg", ".png", ".json"} {
			if _, err := os.Stat(filepath.Join(out, r.ID+ext)); err != nil {
				t.Error(err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(out, recs[5].ID+".jpg")); err == nil {
		t.Error("a record before From was exported")
	}
	for dir, want := range map[string][]string{"false_alarm": {recs[0].ID + ".jpg"}, "defect": {recs[3].ID + ".jpg"}} {
		entries, err := os.ReadDir(filepath.Join(out, dir))
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s/: %v, %v; want %v", dir, got, err, want)
		}
	}
	good := gocv.IMRead(filepath.Join(out, "false_alarm", recs[0].ID+".jpg"), gocv.IMReadColor)
	defer good.Close()
	if good.Cols() != 64 || good.Rows() != 48 {
		t.Errorf("false_alarm/%s.jpg is %dx%d, want the 64x48 frame", recs[0].ID, good.Cols(), good.Rows())
	}
	f, err := os.Open(filepath.Join(out, "index.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("index.jsonl: %v", err)
		}
		lines = append(lines, r.ID)
		if r.ID == recs[0].ID && (r.Mark == nil || r.Mark.Kind != MarkFalseAlarm) {
			t.Errorf("index.jsonl: %s without its mark", r.ID)
		}
	}
	want := ids(recs[:5])
	slices.Reverse(want)
	if !slices.Equal(lines, want) { // oldest first
		t.Errorf("index.jsonl: %v, want %v oldest first", lines, want)
	}

	// By part id, into another folder.
	out2 := filepath.Join(t.TempDir(), "p1")
	if n, err := s.Export(Query{PartID: "p1"}, out2); err != nil || n != 3 {
		t.Errorf("Export by part id = %d, %v; want 3", n, err)
	}
	if _, err := s.Export(Query{Marked: "bad"}, out2); !errors.Is(err, ErrInvalid) {
		t.Errorf("Export of an invalid query: %v", err)
	}
	if _, err := s.Export(Query{}, filepath.Join(s.cfg.Dir, "line1", "x")); !errors.Is(err, ErrInvalid) {
		t.Errorf("Export into the store's folder: %v", err)
	}
}

// gnlctl opens the folder that gnld writes read-only: it removes nothing
// (a write in progress looks like leftovers) and writes nothing.
func TestReadOnly(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	frame, amap := noise(t, 64, 48), ramp(8, 8)
	put(t, s, rec("line1", base, 1, true), frame, amap, 8, 8)
	put(t, s, rec("line1", base.Add(time.Second), 2, true), frame, amap, 8, 8)
	for s.Stats().Queued > 0 {
		time.Sleep(time.Millisecond)
	}
	// A write in progress: its frame is there, its record not yet.
	inProgress := filepath.Join(dir, "line1", "2025-03-01", "line1-20250301T100002.000-3.jpg")
	if err := os.WriteFile(inProgress, []byte("half a JPEG"), 0o640); err != nil {
		t.Fatal(err)
	}
	ro := open(t, Config{Dir: dir, ReadOnly: true})
	if got, want := ids(ro.List(Query{})), ids(s.List(Query{})); len(got) != 2 || !slices.Equal(got, want) {
		t.Errorf("read-only: %v, want %v", got, want)
	}
	if _, err := os.Stat(inProgress); err != nil {
		t.Errorf("a read-only Open removed a file being written: %v", err)
	}
	if ro.Offer(rec("line1", base, 4, true), frame, amap, 8, 8) {
		t.Error("a read-only store kept a record")
	}
	if _, err := ro.Mark(s.List(Query{})[0].ID, Mark{Kind: MarkDefect, By: "ana"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Mark on a read-only store: %v", err)
	}
	if n, err := ro.Export(Query{}, t.TempDir()); n != 2 || err != nil {
		t.Errorf("read-only Export = %d, %v", n, err)
	}
	if _, err := Open(Config{Dir: filepath.Join(dir, "missing"), ReadOnly: true}, nil); err == nil {
		t.Error("a read-only Open of a missing folder succeeded")
	}
}

func TestOpenSkipsCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	frame, amap := noise(t, 64, 48), ramp(8, 8)
	put(t, s, rec("line1", base, 1, true), frame, amap, 8, 8)
	put(t, s, rec("line1", base.Add(time.Second), 2, true), frame, amap, 8, 8)
	s.Close()
	recs := s.List(Query{})
	day := filepath.Join(dir, "line1", "2025-03-01")
	other, _ := json.Marshal(Record{ID: "somebody-else", Camera: "line1", Time: base})
	junk := map[string]string{
		"bad.json":                         `{"id": "bad", "cam`, // cut short
		"renamed.json":                     string(other),        // not its name
		"line1-20250301T100005.000-9.jpg":  "an image without its record",
		recs[0].ID + ".json.tmp":           "a write cut short",
		"line1-20250301T100009.000-10.png": "",
	}
	for name, data := range junk {
		if err := os.WriteFile(filepath.Join(day, name), []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not the store's"), 0o640); err != nil {
		t.Fatal(err)
	}
	s = open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	if got := ids(s.List(Query{})); !slices.Equal(got, ids(recs)) {
		t.Errorf("records %v, want %v", got, ids(recs))
	}
	for name := range junk {
		if _, err := os.Stat(filepath.Join(day, name)); err == nil {
			t.Errorf("%s left", name)
		}
	}
	if disk := diskBytes(t, dir); disk != s.Stats().Bytes {
		t.Errorf("Stats.Bytes %d, files %d (a foreign file counts)", s.Stats().Bytes, disk)
	}
	// A record whose frame is gone is dropped too.
	os.Remove(filepath.Join(day, recs[0].ID+".jpg"))
	s = open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	if got := ids(s.List(Query{})); !slices.Equal(got, ids(recs[1:])) {
		t.Errorf("records %v, want %v", got, ids(recs[1:]))
	}
}

// A write that fails is counted; the store carries on.
func TestWriteErrorsCounted(t *testing.T) {
	dir := t.TempDir()
	// A file where line1's folder would be: every line1 write fails (as
	// root too, unlike a read-only folder).
	if err := os.WriteFile(filepath.Join(dir, "line1"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	s := open(t, Config{Dir: dir, MaxBytes: 1 << 30})
	frame, amap := noise(t, 64, 48), ramp(8, 8)
	put(t, s, rec("line1", base, 1, true), frame, amap, 8, 8)
	put(t, s, rec("line2", base, 1, true), frame, amap, 8, 8)
	put(t, s, rec("line1", base.Add(time.Second), 2, true), frame, amap, 8, 8)
	s.Close()
	st := s.Stats()
	if st.WriteErrors != 2 || st.Records != 1 || st.Bytes != diskBytes(t, dir) {
		t.Errorf("stats %+v; want 2 write errors, line2's record written", st)
	}
}

// BenchmarkOffer is the store's cost on the inference path per frame: a
// 1280x1024 frame and a 256x256 map, kept (copied and queued; the timer
// stops while the writer writes the one before, so that it times Offer
// alone), not kept (a normal frame between the NormalEvery-th), and
// dropped (the queue full).
func BenchmarkOffer(b *testing.B) {
	frame, amap := smooth(b, 1280, 1024), ramp(256, 256)
	anomalous, normal := rec("line1", base, 0, true), rec("line1", base, 0, false)
	b.Run("kept", func(b *testing.B) {
		s := open(b, Config{MaxBytes: 64 << 20})
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			for s.Stats().Queued > 0 { // time Offer alone, not the writer beside it
				time.Sleep(100 * time.Microsecond)
			}
			b.StartTimer()
			anomalous.Seq, anomalous.Time = uint64(i+1), base.Add(time.Duration(i)*time.Millisecond)
			if !s.Offer(anomalous, frame, amap, 256, 256) {
				b.Fatal("not kept")
			}
		}
		b.StopTimer()
		s.Close()
	})
	b.Run("skipped", func(b *testing.B) {
		s := open(b, Config{MaxBytes: 64 << 20, NormalEvery: 1 << 30})
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			normal.Seq = uint64(i + 1)
			s.Offer(normal, frame, amap, 256, 256)
		}
	})
	b.Run("dropped", func(b *testing.B) {
		s := open(b, Config{MaxBytes: 64 << 20, Queue: 1})
		s.mu.Lock() // stall the writer (it waits for the lock): the queue stays full
		defer s.mu.Unlock()
		s.Offer(anomalous, frame, amap, 256, 256)
		for len(s.queue) > 0 { // the writer took it
			time.Sleep(100 * time.Microsecond)
		}
		s.Offer(anomalous, frame, amap, 256, 256)
		b.ReportAllocs()
		for b.Loop() {
			if s.Offer(anomalous, frame, amap, 256, 256) {
				b.Fatal("queued with the queue full")
			}
		}
	})
}
