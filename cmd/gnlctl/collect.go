package main

import (
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"gocv.io/x/gocv"

	"gnld/capture"
)

// collect saves frames of a camera as training images: every Nth frame,
// after the crop and rotation gnld would apply, as lossless PNG into
// OUT/train/good, the layout `gnl fit --data OUT` reads. It stops at
// --count images, before the folder's new files would pass --max-mb, when
// a finite source ends, or on Ctrl-C, and says how many it kept.
func collect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("collect", stderr)
	source := fs.String("source", "", "camera source, as GNLD_CAMERAS takes it: /dev/video0, rtsp://..., gst:..., dir:FOLDER, a video file")
	out := fs.String("out", "", "data folder; images go to OUT/train/good")
	every := fs.Int("every", 1, "keep every Nth frame (spread the images over the line's variation)")
	count := fs.Int("count", 300, "stop after this many images")
	maxMB := fs.Float64("max-mb", 1000, "stop before the images kept would pass this many MB")
	roiText := fs.String("roi", "", "crop X,Y,W,H before rotation, as GNLD_CAMERA_<NAME>_ROI")
	rotate := fs.Int("rotate", 0, "rotate clockwise by 0, 90, 180 or 270 degrees, as GNLD_CAMERA_<NAME>_ROTATE")
	fps := fs.Float64("fps", 0, "read at most this many frames per second (0: as the source gives them)")
	name := fs.String("name", "cam", "camera name, the start of each file name")
	wait := fs.Duration("wait", 30*time.Second, "give up when the source gives no frame for this long (a camera that is not there)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *source == "" || *out == "":
		return usageError{"collect needs --source and --out"}
	case *every < 1 || *count < 1 || !(*maxMB > 0):
		return usageError{"--every and --count must be 1 or more, --max-mb above 0"}
	case *rotate != 0 && *rotate != 90 && *rotate != 180 && *rotate != 270:
		return usageError{fmt.Sprintf("--rotate %d: expected 0, 90, 180 or 270", *rotate)}
	}
	spec, err := capture.ParseSource(*source)
	if err != nil {
		return usageError{fmt.Sprintf("--source: %v", err)}
	}
	roi, err := parseROI(*roiText)
	if err != nil {
		return usageError{fmt.Sprintf("--roi %q: %v", *roiText, err)}
	}
	if spec.Finite() {
		if _, err := os.Stat(spec.Target); err != nil {
			return fmt.Errorf("--source %s: %w", *source, err)
		}
	}
	dir := filepath.Join(*out, "train", "good")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cam, err := capture.New(capture.Config{
		Name: *name, Source: spec, Live: !spec.Finite(), FPS: *fps, ROI: roi, Rotate: *rotate,
		ReadTimeout: 10 * time.Second, BackoffMin: time.Second, BackoffMax: 5 * time.Second,
	}, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- cam.Run(ctx) }()
	stamp := time.Now().UTC().Format("20060102T150405")
	var kept, seen int
	var bytes int64
	limit := int64(*maxMB * 1e6)
	why, done := "the source ended", false
	var starved atomic.Bool // no frame for --wait
	quiet := time.AfterFunc(*wait, func() { starved.Store(true); cancel() })
	defer quiet.Stop()
	for f := range cam.Frames() {
		quiet.Reset(*wait)
		seen++
		if done || (seen-1)%*every != 0 {
			f.Close()
			continue
		}
		buf, err := gocv.IMEncode(gocv.PNGFileExt, f.Mat)
		f.Close()
		if err != nil {
			cancel()
			return fmt.Errorf("frame %d: PNG: %w", f.Seq, err)
		}
		data := slices.Clone(buf.GetBytes()) // GetBytes aliases C memory that Close frees
		buf.Close()
		if bytes+int64(len(data)) > limit {
			why, done = fmt.Sprintf("the next image would pass --max-mb %g", *maxMB), true
			cancel()
			continue
		}
		path := filepath.Join(dir, fmt.Sprintf("%s-%s-%06d.png", *name, stamp, f.Seq))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			cancel()
			return fmt.Errorf("writing %s: %w (disk full? lower --count or --max-mb)", path, err)
		}
		kept++
		bytes += int64(len(data))
		if kept%25 == 0 {
			fmt.Fprintf(stderr, "collect: %d images, %.1f MB\n", kept, float64(bytes)/1e6)
		}
		if kept >= *count {
			why, done = fmt.Sprintf("--count %d reached", *count), true
			cancel()
		}
	}
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("camera %s: %w", spec, err)
	}
	switch {
	case done:
	case starved.Load():
		why = fmt.Sprintf("no frame for --wait %s", *wait)
	case parent.Err() != nil:
		why = "interrupted"
	}
	st := cam.Stats()
	fmt.Fprintf(stdout, "collect: kept %d of %d frames (every %d) in %s: %.1f MB; stopped: %s; bad frames %d\n",
		kept, seen, *every, dir, float64(bytes)/1e6, why, st.Bad)
	if kept == 0 {
		return fmt.Errorf("no image kept from %s: check the source and --roi", spec)
	}
	fmt.Fprintf(stdout, "next: look through them, remove any defective part, then: gnl fit --data %s --out MODEL_DIR\n", *out)
	return nil
}

// parseROI reads X,Y,W,H (empty: the whole frame).
func parseROI(v string) (image.Rectangle, error) {
	if v == "" {
		return image.Rectangle{}, nil
	}
	parts := strings.Split(v, ",")
	if len(parts) != 4 {
		return image.Rectangle{}, errors.New("expected X,Y,W,H")
	}
	var n [4]int
	for i, p := range parts {
		x, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || x < 0 || (i >= 2 && x == 0) {
			return image.Rectangle{}, errors.New("expected X,Y,W,H: whole numbers, X,Y >= 0, W,H > 0")
		}
		n[i] = x
	}
	return image.Rect(n[0], n[1], n[0]+n[2], n[1]+n[3]), nil
}
