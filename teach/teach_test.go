package teach

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"gnld/models"
	"gnld/pipeline"
	"gnld/runtime"
)

// The default bundle and real MTD tiles: the two good tiles it scores
// highest (test/good), and one more good tile that is not taught.
var (
	defaultBundle = filepath.Join("..", "models", "default")
	mtd           = filepath.Join("..", "..", "shared", "data", "mtd")
	highA         = "test/good/exp6_num_183290.jpg"
	highB         = "test/good/exp6_num_193234.jpg"
	other         = "test/good/exp3_num_260521.jpg"
)

func frame(t *testing.T, rel string) Frame {
	t.Helper()
	m := gocv.IMRead(filepath.Join(mtd, rel), gocv.IMReadColor)
	if m.Empty() {
		t.Skipf("%s: not readable (MTD is read from ../shared/data/mtd)", rel)
	}
	t.Cleanup(func() { m.Close() })
	return Frame{ID: filepath.Base(rel), Camera: "top", Mat: m}
}

func load(t *testing.T, dir string) *models.Bundle {
	t.Helper()
	b, err := models.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func score(t *testing.T, b *models.Bundle, f Frame) float64 {
	t.Helper()
	p, err := pipeline.New(b, runtime.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	res, err := p.Process(f.Mat)
	if err != nil {
		t.Fatal(err)
	}
	return float64(res.Score)
}

// A taught frame's memory distances vanish: its score falls, the version
// is new and names what it came from, the frames and rows are recorded,
// the old bundle is untouched, and a tile not taught scores as before.
func TestTeachMakesFrameNormal(t *testing.T) {
	src := load(t, defaultBundle)
	before, _ := os.ReadFile(src.ModelPath)
	a, o := frame(t, highA), frame(t, other)
	otherBefore := score(t, src, o)
	dst := filepath.Join(t.TempDir(), "taught")
	at := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	// A camera threshold of 5.2 (as a calibrated one can be) makes the tile a
	// false alarm; the bundle's own (6.12) does not flag it.
	rep, err := Teach(src, []Frame{a}, dst, Options{By: "ana", Now: at, Threshold: 5.2})
	if err != nil {
		t.Fatal(err)
	}
	f := rep.Frames[0]
	t.Logf("%s: score %.3f -> %.3f (threshold %.3f), %d rows, %s", f.ID, f.ScoreBefore, f.ScoreAfter, f.Threshold, f.Rows, rep.Took)
	if f.Rows == 0 || f.ScoreAfter > f.ScoreBefore-0.3 || !f.Normal {
		t.Errorf("taught frame: %+v; want rows taken and its score down by 0.3 or more", f)
	}
	nb := load(t, dst)
	if nb.Meta.Version == src.Meta.Version || rep.Version != nb.Meta.Version || rep.From != src.Meta.Version {
		t.Errorf("versions: report %s from %s, bundle %s, source %s", rep.Version, rep.From, nb.Meta.Version, src.Meta.Version)
	}
	taught := nb.Meta.Memory.Teach.Taught
	if len(taught) != 1 || taught[0].Frame != a.ID || taught[0].By != "ana" || !taught[0].At.Equal(at) ||
		len(taught[0].Rows) != f.Rows || taught[0].ScoreAfter != f.ScoreAfter || taught[0].From != src.Meta.Version {
		t.Errorf("model.json taught = %+v", taught)
	}
	if s := score(t, nb, a); s != f.ScoreAfter {
		t.Errorf("the new bundle scores the taught frame %.4f, the report says %.4f", s, f.ScoreAfter)
	}
	if d := score(t, nb, o) - otherBefore; d > 0.05 || d < -0.3 {
		t.Errorf("a tile not taught moved by %+.3f", d)
	}
	if after, _ := os.ReadFile(src.ModelPath); !slices.Equal(before, after) {
		t.Error("the source bundle's model changed")
	}
	if _, err := os.Stat(filepath.Join(dst, models.SignatureFile)); err == nil {
		t.Error("the new bundle carries the old signature")
	}

	// Taught again from the new version: the frame is covered already, and
	// a second frame takes rows of its own, never the first frame's.
	b := frame(t, highB)
	dst2 := filepath.Join(t.TempDir(), "taught2")
	rep2, err := Teach(nb, []Frame{a, b}, dst2, Options{By: "ben", Threshold: 5.2})
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Frames[0].Rows != 0 || rep2.Frames[1].Rows == 0 {
		t.Errorf("second teaching took %d rows for the taught frame (want 0) and %d for a new one (want some)",
			rep2.Frames[0].Rows, rep2.Frames[1].Rows)
	}
	t2 := load(t, dst2).Meta.Memory.Teach.Taught
	if len(t2) != 3 {
		t.Fatalf("taught after two teachings: %d entries, want 3", len(t2))
	}
	for _, r := range t2[2].Rows {
		if slices.Contains(t2[0].Rows, r) {
			t.Errorf("row %d taught twice", r)
		}
	}
}

// A bundle without memory.teach is refused with the command that fixes it.
func TestTeachRefusesAnUnteachableBundle(t *testing.T) {
	src := load(t, filepath.Join("..", "models", "testdata", "tiny"))
	_, err := Teach(src, []Frame{frame(t, highA)}, filepath.Join(t.TempDir(), "x"), Options{})
	if !errors.Is(err, ErrNotTeachable) {
		t.Fatalf("err = %v, want ErrNotTeachable", err)
	}
	t.Log(err)
}

// A cap on rows per frame holds, and a destination that exists is refused.
func TestTeachLimits(t *testing.T) {
	src := load(t, defaultBundle)
	rep, err := Teach(src, []Frame{frame(t, highA)}, filepath.Join(t.TempDir(), "x"), Options{MaxRows: 3, Threshold: 5.2})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Frames[0].Rows != 3 {
		t.Errorf("rows = %d, want the cap 3", rep.Frames[0].Rows)
	}
	if _, err := Teach(src, []Frame{frame(t, highA)}, t.TempDir(), Options{}); err == nil {
		t.Error("teaching into an existing folder: no error")
	}
	// A frame already well below the threshold takes no row.
	rep, err = Teach(src, []Frame{frame(t, other)}, filepath.Join(t.TempDir(), "y"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if f := rep.Frames[0]; f.Rows != 0 || !f.Normal {
		t.Errorf("a normal frame: %+v, want no row taken", f)
	}
}
