//go:build matprofile

package capture

import (
	"context"
	"image"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

// TestNoMatLeaks runs the paths that make, crop, rotate, drop and skip
// Mats, and checks with gocv's MatProfile that none is left open:
//
//	go test -tags matprofile ./capture
func TestNoMatLeaks(t *testing.T) {
	before := gocv.MatProfile.Count()
	dir := t.TempDir()
	writeImages(t, dir, 12, 32, 24)
	os.WriteFile(filepath.Join(dir, "005b.png"), []byte("corrupt"), 0o644)
	for _, live := range []bool{false, true} {
		cfg := testConfig("m", "dir:"+dir)
		cfg.Live = live
		cfg.ROI = image.Rect(1, 1, 21, 11)
		cfg.Rotate = 180
		cam, err := New(cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		go cam.Run(context.Background())
		if live {
			time.Sleep(200 * time.Millisecond) // the reader runs ahead: frames are dropped
		}
		for f := range cam.Frames() {
			f.Close()
		}
		if s := cam.Stats(); s.Bad != 1 || (live && s.Dropped == 0) {
			t.Errorf("live=%v: stats %+v", live, s)
		}
	}
	if n := gocv.MatProfile.Count() - before; n != 0 {
		t.Errorf("%d Mats left open", n)
	}
}
