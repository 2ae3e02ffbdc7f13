// Package capture reads frames from cameras, streams, video files and image
// folders and hands them, one camera at a time, to a single consumer.
//
// Lifecycle: New checks a Config; the daemon calls Run once, in a goroutine
// of its own, and reads Frames until the channel is closed, closing every
// Frame it receives. Run reconnects a failed source with bounded
// exponential backoff and returns only when its context is cancelled or a
// finite source that does not loop has ended; it closes Frames on return.
// Stats may be called from any goroutine at any time.
//
// Hand-off: a live camera (the default for devices and streams) never waits
// for the consumer. It keeps only the latest frame; an older frame not yet
// taken is closed and counted as dropped. A folder or a video file is not a
// live camera: by default each of its frames is handed on once, in order,
// and reading waits for the consumer. Config.Live overrides either choice.
//
// Watchdog: OpenCV's VideoCapture.Read can block forever (opencv/opencv
// #22677). Each connection is opened and read by a reader goroutine that
// the camera does not wait for: when no frame arrives within ReadTimeout,
// the connection is abandoned (counted as a stall) and a new one is opened
// after the backoff. The abandoned reader closes its Mat and its
// VideoCapture if the blocked call ever returns.
package capture

import (
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"gocv.io/x/gocv"
)

// Config describes one camera.
type Config struct {
	Name   string
	Source Spec
	// Live: keep only the latest frame and drop older ones the consumer has
	// not taken yet. Without it every frame is handed on and reading waits.
	Live bool
	// Loop: start a finite source (file, folder) again when it ends.
	Loop bool
	// FPS caps the frame rate (0: as fast as the source gives frames).
	FPS float64
	// ROI crops each frame (before rotation); the zero Rectangle keeps the
	// whole frame. A frame the ROI does not fit in is a bad frame.
	ROI image.Rectangle
	// Rotate turns each frame clockwise by 0, 90, 180 or 270 degrees.
	Rotate int
	// ReadTimeout is the watchdog: a connection that gives no frame (or,
	// when opening, no first frame) for this long is abandoned.
	ReadTimeout time.Duration
	// BackoffMin and BackoffMax bound the delay between reconnects; it
	// doubles after each failure and is reset by a frame.
	BackoffMin, BackoffMax time.Duration
	// Genicam is a genicam source's camera settings; zero for others.
	Genicam Genicam
	// SoftwareTrigger (genicam sources only): the camera is set to
	// TriggerMode=On, TriggerSource=Software and gives a frame only when
	// Trigger is called, one per call (aravis.go). Waiting for the next
	// trigger is not a stall: the watchdog then watches a liveness check
	// of the connection instead of frames.
	SoftwareTrigger bool
}

// Frame is one captured image. Whoever receives a Frame owns its Mat and
// must Close it.
type Frame struct {
	Camera string
	Seq    uint64    // 1, 2, ... per camera for the life of the process; gaps are drops
	Time   time.Time // when the frame was read
	File   string    // source file name (folder, video file); "" for live sources
	Mat    gocv.Mat  // 8-bit BGR
}

// Close frees the frame's Mat.
func (f *Frame) Close() error { return f.Mat.Close() }

// Stats are a camera's counters since start.
type Stats struct {
	Frames  uint64 `json:"frames"`  // handed to the consumer
	Dropped uint64 `json:"dropped"` // replaced by a newer frame before the consumer took them
	Bad     uint64 `json:"bad"`     // empty, not 8-bit colour or ROI outside the frame; skipped
	// SizeChanges counts the times a device's, stream's or video file's
	// frames changed size (a camera reconfigured, a stream renegotiated):
	// frames of the new size are handed on. Folder images may all differ.
	SizeChanges uint64 `json:"size_changes"`
	Reconnects  uint64 `json:"reconnects"` // connections that failed or ended unexpectedly
	Stalls      uint64 `json:"stalls"`     // of those, connections the watchdog abandoned
	// Refused counts the connections to a genicam camera that failed
	// because the camera does not take one of its settings (RefusedError).
	Refused uint64 `json:"refused,omitempty"`
	// Untriggered counts the frames a software-triggered camera sent
	// without a trigger (discarded, never handed on): a camera that
	// ignores TriggerMode.
	Untriggered uint64 `json:"untriggered,omitempty"`
}

// Camera reads one source. See the package comment for its lifecycle.
type Camera struct {
	cfg Config
	log *slog.Logger
	out chan Frame

	// Used only by Run's goroutine.
	seq      uint64
	lastFile string    // last file of a folder handed on or skipped
	sizeWarn time.Time // rate-limits the size change warning
	// due is when the last frame handed on was due under FPS. It
	// outlives a session, so that a looping folder or file keeps its rate
	// from one pass to the next.
	due time.Time

	frames, dropped, bad, reconnects, stalls, sizeChanges, refused, untriggered atomic.Uint64

	// Software trigger: Trigger hands a request to the session (fire)
	// while one is connected (ready).
	fire  chan *fireReq
	ready atomic.Bool
}

// New checks cfg and returns a camera that has not started reading.
func New(cfg Config, log *slog.Logger) (*Camera, error) {
	switch {
	case cfg.Name == "":
		return nil, errors.New("camera without a name")
	case cfg.Rotate%90 != 0 || cfg.Rotate < 0 || cfg.Rotate >= 360:
		return nil, fmt.Errorf("camera %s: rotate %d: expected 0, 90, 180 or 270", cfg.Name, cfg.Rotate)
	case cfg.ROI != image.Rectangle{} && (cfg.ROI.Empty() || cfg.ROI.Min.X < 0 || cfg.ROI.Min.Y < 0):
		return nil, fmt.Errorf("camera %s: roi %v: expected a non-empty rectangle at x,y >= 0", cfg.Name, cfg.ROI)
	case cfg.ReadTimeout <= 0 || cfg.BackoffMin <= 0 || cfg.BackoffMax < cfg.BackoffMin:
		return nil, fmt.Errorf("camera %s: timeouts must be positive and backoff min <= max", cfg.Name)
	case cfg.FPS < 0:
		return nil, fmt.Errorf("camera %s: fps %g: expected >= 0", cfg.Name, cfg.FPS)
	case cfg.Source.Kind != KindGenicam && cfg.SoftwareTrigger:
		return nil, fmt.Errorf("camera %s: software trigger is for genicam: sources only", cfg.Name)
	case cfg.Source.Kind != KindGenicam && !cfg.Genicam.IsZero():
		return nil, fmt.Errorf("camera %s: camera settings (pixel format, exposure, gain, frame rate) are for genicam: sources only", cfg.Name)
	}
	if err := cfg.Genicam.check(); err != nil {
		return nil, fmt.Errorf("camera %s: %w", cfg.Name, err)
	}
	return &Camera{cfg: cfg, log: log.With("camera", cfg.Name), out: make(chan Frame, 1), fire: make(chan *fireReq)}, nil
}

// Name returns the camera's name.
func (c *Camera) Name() string { return c.cfg.Name }

// Frames is the hand-off to the consumer. It is closed when Run returns.
func (c *Camera) Frames() <-chan Frame { return c.out }

// Stats returns the counters; safe from any goroutine.
func (c *Camera) Stats() Stats {
	return Stats{
		Frames: c.frames.Load(), Dropped: c.dropped.Load(), Bad: c.bad.Load(),
		Reconnects: c.reconnects.Load(), Stalls: c.stalls.Load(), SizeChanges: c.sizeChanges.Load(),
		Refused: c.refused.Load(), Untriggered: c.untriggered.Load(),
	}
}

// errEmptyPass is a looping source that ended without a single frame.
var errEmptyPass = errors.New("source ended without a frame")

// Run reads until ctx is cancelled or a finite, non-looping source ends,
// reconnecting after failures. It always returns nil: a source that fails
// is retried, never fatal. Call it once.
func (c *Camera) Run(ctx context.Context) error {
	defer close(c.out)
	delay := c.cfg.BackoffMin
	var failures int // consecutive failed connections
	var outage time.Time
	for {
		// Said at the connection's first good frame, not when it ends.
		back := func() {
			if failures > 0 {
				c.log.Info("capture: source back", "failures", failures, "outage", time.Since(outage).Round(time.Millisecond))
			}
		}
		session := c.session
		if c.cfg.SoftwareTrigger {
			session = c.sessionTriggered
		}
		delivered, err := session(ctx, back)
		if ctx.Err() != nil {
			return nil
		}
		if delivered > 0 {
			failures, delay = 0, c.cfg.BackoffMin
		}
		if errors.Is(err, io.EOF) {
			if !c.cfg.Loop {
				c.log.Info("capture: source finished", "frames", c.frames.Load(), "bad", c.bad.Load())
				return nil
			}
			c.lastFile = "" // the next pass starts at the beginning
			if delivered > 0 {
				continue
			}
			err = errEmptyPass
		}
		c.reconnects.Add(1)
		if failures == 0 {
			outage = time.Now()
			c.log.Warn("capture: source failed, reconnecting with backoff", "source", c.cfg.Source.String(), "err", err)
		} else {
			c.log.Debug("capture: reconnect failed", "err", err, "failures", failures, "next_in", delay)
		}
		failures++
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil
		}
		delay = min(2*delay, c.cfg.BackoffMax)
	}
}

// read is what a reader goroutine hands to its session.
type read struct {
	mat  gocv.Mat
	file string
	err  error
	at   time.Time
	// Software trigger only: beat is a connection that is open and
	// answers while it waits for a trigger (mat is no frame); strays
	// counts the frames the camera sent without a trigger.
	beat   bool
	strays uint64
}

// session opens one connection and reads it until it fails, ends, stalls
// or ctx is cancelled. It returns how many frames it handed on. It calls
// first once, at the connection's first good frame, before handing it on.
func (c *Camera) session(ctx context.Context, first func()) (delivered int, err error) {
	stop := make(chan struct{})
	defer close(stop)
	reads := make(chan read)
	go readLoop(c.cfg.Source, c.cfg.Genicam, c.lastFile, reads, stop)

	watchdog := time.NewTimer(c.cfg.ReadTimeout)
	defer watchdog.Stop()
	var size image.Point // of this connection's last good frame
	for {
		select {
		case <-ctx.Done():
			return delivered, ctx.Err()
		case <-watchdog.C:
			c.stalls.Add(1)
			return delivered, fmt.Errorf("no frame within %s: connection abandoned", c.cfg.ReadTimeout)
		case r := <-reads:
			if r.err != nil {
				r.mat.Close()
				if _, ok := errors.AsType[*RefusedError](r.err); ok {
					c.refused.Add(1)
				}
				return delivered, r.err
			}
			if c.cfg.Source.Kind == KindDir {
				c.lastFile = r.file
			}
			mat, why := c.prepare(r.mat, &size)
			if why != "" {
				n := c.bad.Add(1)
				level := slog.LevelDebug
				if n == 1 {
					level = slog.LevelWarn // the first one; the rest are counted in stats
				}
				c.log.Log(ctx, level, "capture: bad frame skipped", "file", r.file, "why", why, "bad", n)
			} else {
				if first != nil {
					first()
					first = nil
				}
				c.seq++
				f := Frame{Camera: c.cfg.Name, Seq: c.seq, Time: r.at, File: r.file, Mat: mat}
				if !c.handOn(ctx, f) {
					return delivered, ctx.Err()
				}
				c.frames.Add(1)
				delivered++
				if c.cfg.FPS > 0 { // the next read is taken when it is due
					c.due = pace(ctx, c.due, c.cfg.FPS)
				}
			}
			watchdog.Reset(c.cfg.ReadTimeout)
		}
	}
}

// readLoop opens the source and reads it, sending each read to reads. It
// owns the connection and every Mat until reads takes it, and returns (and
// closes the connection) after an error or once stop is closed. It may
// outlive its session when a call into OpenCV blocks.
func readLoop(s Spec, g Genicam, after string, reads chan<- read, stop <-chan struct{}) {
	src, err := open(s, g, after)
	if err != nil {
		select {
		case reads <- read{mat: gocv.NewMat(), err: err}:
		case <-stop:
		}
		return
	}
	defer src.Close()
	for {
		m := gocv.NewMat()
		file, err := src.Read(&m)
		select {
		case reads <- read{mat: m, file: file, err: err, at: time.Now()}:
		case <-stop:
			m.Close()
			return
		}
		if err != nil {
			return
		}
	}
}

// prepare checks a frame and applies ROI and rotation. It takes ownership
// of m: it returns the Mat to hand on, or closes m and says why not.
func (c *Camera) prepare(m gocv.Mat, size *image.Point) (gocv.Mat, string) {
	if m.Empty() || m.Type() != gocv.MatTypeCV8UC3 {
		m.Close()
		return gocv.Mat{}, "empty or not 8-bit BGR"
	}
	got := image.Pt(m.Cols(), m.Rows())
	// Images in a folder may differ in size. A camera's frames changing
	// size is worth a warning (the camera was reconfigured, the stream
	// renegotiated): the pipeline scales any size to the model's input,
	// so the frames are scored, but the ROI and the drift statistics were
	// set up for the old size.
	if c.cfg.Source.Kind != KindDir {
		if *size != (image.Point{}) && got != *size {
			n := c.sizeChanges.Add(1)
			if time.Since(c.sizeWarn) >= 10*time.Second {
				c.sizeWarn = time.Now()
				c.log.Warn("capture: frame size changed; frames of the new size are scored (check the camera's settings and GNLD_CAMERA_<NAME>_ROI)",
					"from", fmt.Sprintf("%dx%d", size.X, size.Y), "to", fmt.Sprintf("%dx%d", got.X, got.Y), "size_changes", n)
			}
		}
		*size = got
	}
	if roi := c.cfg.ROI; roi != (image.Rectangle{}) {
		if !roi.In(image.Rectangle{Max: got}) {
			m.Close()
			return gocv.Mat{}, fmt.Sprintf("roi %v outside the %dx%d frame", roi, got.X, got.Y)
		}
		view := m.Region(roi)
		cropped := view.Clone()
		view.Close()
		m.Close()
		m = cropped
	}
	var flag gocv.RotateFlag
	switch c.cfg.Rotate {
	case 90:
		flag = gocv.Rotate90Clockwise
	case 180:
		flag = gocv.Rotate180Clockwise
	case 270:
		flag = gocv.Rotate90CounterClockwise
	default:
		return m, ""
	}
	rotated := gocv.NewMat()
	gocv.Rotate(m, &rotated, flag)
	m.Close()
	return rotated, ""
}

// handOn gives f to the consumer; see the package comment. It returns
// false (and closes f) only when ctx is cancelled while waiting.
func (c *Camera) handOn(ctx context.Context, f Frame) bool {
	if !c.cfg.Live {
		select {
		case c.out <- f:
			return true
		case <-ctx.Done():
			f.Close()
			return false
		}
	}
	select {
	case c.out <- f:
		return true
	default:
	}
	select {
	case old := <-c.out:
		old.Close()
		c.dropped.Add(1)
	default: // the consumer took it meanwhile
	}
	c.out <- f // never blocks: Run is the only sender and the slot is empty
	return true
}

// pace is called after a frame due at due was handed on (the zero time:
// the camera's first frame, due now). It sleeps until the next frame is
// due, one interval after due, or until ctx is done, and returns that
// time. A frame handed on late (a slow consumer or source) makes the next
// one due at once, without a burst to catch up.
func pace(ctx context.Context, due time.Time, fps float64) time.Time {
	now := time.Now()
	if due.IsZero() {
		due = now
	}
	next := due.Add(time.Duration(float64(time.Second) / fps))
	if next.Before(now) {
		return now
	}
	t := time.NewTimer(next.Sub(now))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return next
}
