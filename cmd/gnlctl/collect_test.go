package main

import (
	"bytes"
	"context"
	"image"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gocv.io/x/gocv"
)

// mtdGood copies the first n of MTD's test/good images into a folder, as a
// camera's frames.
func mtdGood(t *testing.T, n int) (string, []string) {
	root := os.Getenv("MTD")
	if root == "" {
		root = "../../../shared/data/mtd"
	}
	names, _ := filepath.Glob(filepath.Join(root, "test", "good", "*.jpg"))
	if len(names) < n {
		t.Skipf("MTD test/good not found under %s", root)
	}
	slices.Sort(names)
	var base []string
	for _, p := range names[:n] {
		base = append(base, filepath.Base(p))
	}
	return copyImages(t, filepath.Dir(names[0]), base), base
}

// Every 2nd frame of a folder of real images, cropped and turned as gnld
// would, lands as PNG in OUT/train/good, the layout gnl fit reads; --count
// and --max-mb stop it, and a missing source is a clear error.
func TestCollect(t *testing.T) {
	src, names := mtdGood(t, 8)
	first := gocv.IMRead(filepath.Join(src, names[0]), gocv.IMReadColor)
	defer first.Close()
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"collect", "--source", "dir:" + src, "--out", out, "--every", "2",
		"--roi", "10,20,100,60", "--rotate", "90", "--name", "line1"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("collect: %v\n%s", err, stderr.String())
	}
	files, _ := filepath.Glob(filepath.Join(out, "train", "good", "line1-*.png"))
	if len(files) != 4 || !strings.Contains(stdout.String(), "kept 4 of 8 frames") || !strings.Contains(stdout.String(), "gnl fit --data "+out) {
		t.Fatalf("%d files %v; output %q; want 4 (every 2nd of 8) and the next step", len(files), files, stdout.String())
	}
	slices.Sort(files)
	img := gocv.IMRead(files[0], gocv.IMReadUnchanged)
	defer img.Close()
	// The crop (100 wide, 60 high) turned by 90 degrees: 60 wide, 100 high,
	// and the first frame's pixels, losslessly.
	want := first.Region(imageRect(10, 20, 100, 60))
	turned := gocv.NewMat()
	defer turned.Close()
	gocv.Rotate(want, &turned, gocv.Rotate90Clockwise)
	if img.Cols() != 60 || img.Rows() != 100 {
		t.Fatalf("image %dx%d, want 60x100 (ROI then rotation)", img.Cols(), img.Rows())
	}
	diff := gocv.NewMat()
	defer diff.Close()
	gocv.AbsDiff(img, turned, &diff)
	if n := gocv.CountNonZero(diff.Reshape(1, 0)); n != 0 {
		t.Errorf("%d pixel values differ from the first frame's crop: not lossless, or another frame", n)
	}

	out2 := t.TempDir()
	stdout.Reset()
	if err := run(context.Background(), []string{"collect", "--source", "dir:" + src, "--out", out2, "--count", "3"}, &stdout, &stderr); err != nil ||
		!strings.Contains(stdout.String(), "kept 3 of") || !strings.Contains(stdout.String(), "--count 3 reached") {
		t.Errorf("--count 3: %v, %q", err, stdout.String())
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"collect", "--source", "dir:" + src, "--out", t.TempDir(), "--max-mb", "0.0001"}, &stdout, &stderr); err == nil ||
		!strings.Contains(stdout.String(), "would pass --max-mb") || !strings.Contains(err.Error(), "no image kept") {
		t.Errorf("--max-mb below one image: %v, %q; want nothing kept and the reason", err, stdout.String())
	}
	err = run(context.Background(), []string{"collect", "--source", "dir:" + filepath.Join(src, "missing"), "--out", t.TempDir()}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing folder: %v; want an error naming it", err)
	}
	stdout.Reset()
	err = run(context.Background(), []string{"collect", "--source", "http://127.0.0.1:9/none.mjpg", "--out", t.TempDir(), "--wait", "2s"}, &stdout, &stderr)
	if err == nil || !strings.Contains(stdout.String(), "no frame for --wait 2s") {
		t.Errorf("a camera that is not there: %v, %q; want an error and the reason", err, stdout.String())
	}
	for _, bad := range [][]string{{"--source", "dir:" + src}, {"--source", "dir:" + src, "--out", out, "--rotate", "45"},
		{"--source", "dir:" + src, "--out", out, "--roi", "1,2,3"}, {"--source", "ftp://x", "--out", out}} {
		if err := run(context.Background(), append([]string{"collect"}, bad...), &stdout, &stderr); err == nil {
			t.Errorf("collect %v: no error", bad)
		}
	}
}

func imageRect(x, y, w, h int) image.Rectangle { return image.Rect(x, y, x+w, y+h) }
