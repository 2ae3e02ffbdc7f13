package capture

import (
	"context"
	"fmt"
	"image"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

func TestParseSource(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
		err  bool
	}{
		{in: "/dev/video2", want: Spec{KindV4L2, "2"}},
		{in: "v4l2:0", want: Spec{KindV4L2, "0"}},
		{in: "v4l2:x", err: true},
		{in: "rtsp://cam/stream", want: Spec{KindStream, "rtsp://cam/stream"}},
		{in: "https://cam/mjpg", want: Spec{KindStream, "https://cam/mjpg"}},
		{in: "gst:videotestsrc ! appsink", want: Spec{KindGst, "videotestsrc ! appsink"}},
		{in: "gst:", err: true},
		{in: "dir:/data", want: Spec{KindDir, "/data"}},
		{in: "file:/a.mkv", want: Spec{KindFile, "/a.mkv"}},
		{in: "/a.mkv", want: Spec{KindFile, "/a.mkv"}},
		{in: "ftp://x", err: true},
		{in: "", err: true},
	} {
		got, err := ParseSource(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseSource(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// writeImages writes n solid-grey w x h PNGs named 000.png, 001.png, ...
// into dir; image i has grey level 10*i so a test can tell them apart.
func writeImages(t *testing.T, dir string, n, w, h int) {
	t.Helper()
	for i := range n {
		m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(float64(10*i), float64(10*i), float64(10*i), 0), h, w, gocv.MatTypeCV8UC3)
		if !gocv.IMWrite(filepath.Join(dir, fmt.Sprintf("%03d.png", i)), m) {
			t.Fatal("IMWrite failed")
		}
		m.Close()
	}
}

func testConfig(name, source string) Config {
	s, err := ParseSource(source)
	if err != nil {
		panic(err)
	}
	return Config{
		Name: name, Source: s, Live: !s.Finite(),
		ReadTimeout: 2 * time.Second, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// start runs cam.Run in a goroutine; the returned func cancels it and
// waits, failing the test if Run does not return within 5s.
func start(t *testing.T, cam *Camera) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cam.Run(ctx); close(done) }()
	return func() {
		cancel()
		for f := range cam.Frames() {
			f.Close()
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
}

// next receives one frame or fails after timeout.
// waitReconnects drains and closes frames read before the source failed
// until the camera has tried to reopen it twice; why names the failure.
func waitReconnects(t *testing.T, cam *Camera, why string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for cam.Stats().Reconnects < 2 {
		select {
		case f := <-cam.Frames():
			f.Close()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnects while the %s: %+v", why, cam.Stats())
		}
	}
}

func next(t *testing.T, cam *Camera, timeout time.Duration) (Frame, bool) {
	t.Helper()
	select {
	case f, ok := <-cam.Frames():
		return f, ok
	case <-time.After(timeout):
		t.Fatalf("no frame within %s; stats %+v", timeout, cam.Stats())
		return Frame{}, false
	}
}

func TestFolderEachFileOnceInOrderAndBadFramesSkipped(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 5, 32, 24)
	// A corrupt image and a file that is not an image at all.
	os.WriteFile(filepath.Join(dir, "002b.jpg"), []byte("not a jpeg"), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644)

	cfg := testConfig("c1", "dir:"+dir)
	cfg.ROI = image.Rect(2, 2, 22, 12) // 20 x 10
	cfg.Rotate = 90
	cam, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	go cam.Run(context.Background())
	var got []string
	for f := range cam.Frames() {
		time.Sleep(5 * time.Millisecond) // a slow consumer must not cause drops
		if f.Camera != "c1" || f.Seq != uint64(len(got)+1) || f.Time.IsZero() {
			t.Errorf("frame %+v", f)
		}
		if f.Mat.Cols() != 10 || f.Mat.Rows() != 20 {
			t.Errorf("%s: %dx%d after ROI and rotation, want 10x20", f.File, f.Mat.Cols(), f.Mat.Rows())
		}
		got = append(got, f.File)
		f.Close()
	}
	want := "[000.png 001.png 002.png 003.png 004.png]"
	if fmt.Sprint(got) != want {
		t.Errorf("files %v, want %s", got, want)
	}
	if s := cam.Stats(); s.Bad != 1 || s.Dropped != 0 || s.Frames != 5 || s.Reconnects != 0 {
		t.Errorf("stats %+v, want 5 frames, 1 bad, nothing dropped", s)
	}
}

func TestROIOutsideFrameIsBad(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 2, 16, 16)
	cfg := testConfig("c", "dir:"+dir)
	cfg.ROI = image.Rect(0, 0, 17, 8)
	cam, _ := New(cfg, testLogger(t))
	go cam.Run(context.Background())
	for f := range cam.Frames() {
		t.Errorf("unexpected frame %s", f.File)
		f.Close()
	}
	if s := cam.Stats(); s.Bad != 2 {
		t.Errorf("stats %+v, want 2 bad", s)
	}
}

// A looping folder that is emptied reconnects with backoff, and reads
// again once images are back.
func TestFolderEmptiedThenRefilledReconnects(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 2, 8, 8)
	cfg := testConfig("c", "dir:"+dir)
	cfg.Loop = true
	cam, _ := New(cfg, testLogger(t))
	stop := start(t, cam)
	defer stop()

	f, _ := next(t, cam, 5*time.Second)
	f.Close()
	for _, n := range []string{"000.png", "001.png"} {
		os.Remove(filepath.Join(dir, n))
	}
	// Drain what was read before the folder emptied, until reconnects start.
	waitReconnects(t, cam, "folder is empty")
	writeImages(t, dir, 1, 8, 8)
	f, _ = next(t, cam, 5*time.Second)
	if f.File != "000.png" {
		t.Errorf("after refill got %q", f.File)
	}
	f.Close()
}

// syncBuffer is a log destination for a test and the camera's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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

// "capture: source back" is said when the source gives its first frame
// again, not when that connection later ends (the soak found it logged
// minutes late, at the next failure, with the healthy minutes counted as
// outage).
func TestSourceBackSaidAtFirstFrame(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 1, 8, 8)
	cfg := testConfig("c", "dir:"+dir)
	cfg.Loop = true
	var logs syncBuffer
	cam, _ := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	stop := start(t, cam)
	defer stop()

	f, _ := next(t, cam, 5*time.Second)
	f.Close()
	os.Remove(filepath.Join(dir, "000.png"))
	waitReconnects(t, cam, "folder is empty")
	// Many images: the pass (the connection) lasts while the test holds
	// the hand-off.
	refilled := time.Now()
	writeImages(t, dir, 20, 8, 8)
	for {
		f, _ = next(t, cam, 5*time.Second)
		f.Close()
		if f.File == "000.png" && f.Time.After(refilled) {
			break // the first frame of the refilled folder
		}
	}
	if !strings.Contains(logs.String(), "capture: source back") {
		t.Errorf("first frame after the outage handed on, no \"capture: source back\" yet:\n%s", logs.String())
	}
}

// encodeVideo writes n frames of w x h into a lossless video with ffmpeg.
func encodeVideo(t *testing.T, n, w, h int) string {
	t.Helper()
	dir := t.TempDir()
	writeImages(t, dir, n, w, h)
	out := filepath.Join(t.TempDir(), "clip.mkv")
	cmd := exec.Command("ffmpeg", "-v", "error", "-framerate", "10", "-i", filepath.Join(dir, "%03d.png"),
		"-c:v", "ffv1", "-pix_fmt", "bgr0", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	return out
}

func TestVideoFileEveryFrameThenFinished(t *testing.T) {
	if testing.Short() {
		t.Skip("ffmpeg")
	}
	clip := encodeVideo(t, 6, 32, 32)
	cam, _ := New(testConfig("v", clip), testLogger(t))
	go cam.Run(context.Background())
	var n int
	for f := range cam.Frames() {
		n++
		// Grey level 10*i survives lossless encoding.
		if v := f.Mat.GetVecbAt(5, 5)[0]; int(v) != 10*(n-1) || f.File != "clip.mkv" {
			t.Errorf("frame %d: grey %d file %q", n, v, f.File)
		}
		f.Close()
	}
	if n != 6 {
		t.Errorf("%d frames, want 6; %+v", n, cam.Stats())
	}
}

// A looping video file that is renamed away is retried with backoff and
// read again once it is back.
func TestVideoFileRenamedAndBack(t *testing.T) {
	if testing.Short() {
		t.Skip("ffmpeg")
	}
	clip := encodeVideo(t, 2, 16, 16)
	cfg := testConfig("v", clip)
	cfg.Loop = true
	cam, _ := New(cfg, testLogger(t))
	stop := start(t, cam)
	defer stop()
	f, _ := next(t, cam, 5*time.Second)
	f.Close()
	os.Rename(clip, clip+".away")
	waitReconnects(t, cam, "file is gone")
	os.Rename(clip+".away", clip)
	f, _ = next(t, cam, 5*time.Second)
	f.Close()
}

// A live source keeps only the newest frame when the consumer is slow.
func TestLiveDropsOldFrames(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 20, 8, 8)
	cfg := testConfig("live", "dir:"+dir)
	cfg.Live = true
	cam, _ := New(cfg, testLogger(t))
	go cam.Run(context.Background())
	time.Sleep(300 * time.Millisecond) // the reader runs ahead
	var seqs []uint64
	for f := range cam.Frames() {
		seqs = append(seqs, f.Seq)
		f.Close()
	}
	s := cam.Stats()
	if s.Dropped == 0 || s.Frames != 20 || uint64(len(seqs))+s.Dropped != 20 || seqs[len(seqs)-1] != 20 {
		t.Errorf("seqs %v stats %+v: want drops, the last frame kept", seqs, s)
	}
}

// The watchdog abandons a connection whose open blocks: a video "file"
// that is a FIFO nobody writes to blocks in open(2).
func TestWatchdogAbandonsBlockedRead(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "stuck.mkv")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip(err)
	}
	cfg := testConfig("w", fifo)
	cfg.ReadTimeout = 200 * time.Millisecond
	cam, _ := New(cfg, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cam.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for cam.Stats().Stalls < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	if s := cam.Stats(); s.Stalls < 2 || s.Reconnects < 2 {
		t.Errorf("stats %+v: want the stalled opens abandoned and retried", s)
	}
	// Unblock the abandoned readers so they can close their captures.
	for range cam.Stats().Stalls {
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	}
}

// GNLD_CAMERA_<NAME>_FPS holds across the passes of a looping folder: the
// first frame of a pass waits its interval after the last of the pass
// before, as every other frame does. (Before, each pass started at once:
// 2 images at 10 fps gave 8 frames in 0.4 s instead of 0.7 s.)
func TestFPSHoldsAcrossLoopPasses(t *testing.T) {
	dir := t.TempDir()
	writeImages(t, dir, 2, 8, 8)
	cfg := testConfig("c", "dir:"+dir)
	cfg.Loop = true
	cfg.FPS = 10
	cam, _ := New(cfg, testLogger(t))
	stop := start(t, cam)
	defer stop()
	// Frames are handed on at the rate (Frame.Time is when the image was
	// read, which runs one frame ahead). The gaps are measured where the
	// frames arrive; the slack covers this goroutine waking late, and a
	// loaded machine only makes gaps longer.
	const interval = 100 * time.Millisecond
	var first, last time.Time
	for i := range 8 { // four passes
		f, _ := next(t, cam, 5*time.Second)
		now := time.Now()
		if i == 0 {
			first = now
		} else if gap := now.Sub(last); gap < interval/2 {
			t.Errorf("frame %d (%s) came %s after the one before; want about %s at 10 fps", i+1, f.File, gap, interval)
		}
		last = now
		f.Close()
	}
	if span := last.Sub(first); span < 7*interval-100*time.Millisecond {
		t.Errorf("8 frames in %s; want about %s at 10 fps", span, 7*interval)
	}
}
