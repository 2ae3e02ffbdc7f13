package capture

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"time"

	"gocv.io/x/gocv"
)

// Software trigger (Config.SoftwareTrigger): the camera gives a frame only
// when Trigger asks for one. Trigger hands the request to the session,
// whose reader goroutine executes the camera's TriggerSoftware command and
// waits for the frame; the session prepares the frame, hands it on through
// Frames like any other, and only then answers Trigger. So each Trigger
// that returns nil has put exactly one frame on Frames, and one that
// returns an error has put none.
//
// Between triggers the reader checks the connection every aliveEvery
// (a register read, and Aravis's heartbeat), so that a camera that went
// away is reconnected before the next trigger, as a free-running camera
// that stops giving frames is.

// ErrNotConnected is Trigger's error while the camera is not connected
// (starting, or reconnecting after a failure).
var ErrNotConnected = errors.New("camera not connected (reconnecting)")

// fireReq is one Trigger call waiting for its frame.
type fireReq struct{ done chan error }

// Triggered reports whether the camera gives frames only on Trigger.
func (c *Camera) Triggered() bool { return c.cfg.SoftwareTrigger }

// Trigger fires the camera's software trigger and waits until the frame
// it gives has been put on Frames (nil), or until it is clear that no
// frame will come (an error: not connected, no frame within the wait, a
// bad frame). It waits at most about ReadTimeout. Call it from one
// goroutine at a time, the one that reads Frames.
func (c *Camera) Trigger() error {
	if !c.cfg.SoftwareTrigger {
		return errors.New("camera is not in software trigger mode")
	}
	if !c.ready.Load() {
		return ErrNotConnected
	}
	req := &fireReq{done: make(chan error, 1)}
	t := time.NewTimer(c.cfg.ReadTimeout)
	defer t.Stop()
	select {
	case c.fire <- req:
	case <-t.C: // the session ended meanwhile
		return ErrNotConnected
	}
	return <-req.done // the session always answers a request it took
}

// triggerWait bounds the wait for a triggered frame: the exposure and 1 s,
// at most half the watchdog.
func (c *Camera) triggerWait() time.Duration {
	exp := time.Duration(c.cfg.Genicam.ExposureUS * float64(time.Microsecond))
	return min(time.Second+exp, c.cfg.ReadTimeout/2)
}

// aliveEvery is how often a connection waiting for a trigger is checked.
func (c *Camera) aliveEvery() time.Duration { return min(500*time.Millisecond, c.cfg.ReadTimeout/2) }

// sessionTriggered is session for a software-triggered camera.
func (c *Camera) sessionTriggered(ctx context.Context, first func()) (delivered int, err error) {
	stop := make(chan struct{})
	reads := make(chan read)
	fires := make(chan struct{}, 1)
	var pending *fireReq
	defer func() {
		c.ready.Store(false)
		close(stop)
		if pending != nil {
			pending.done <- fmt.Errorf("no frame: %w", err)
		}
	}()
	go readLoopTriggered(c.cfg.Source, c.cfg.Genicam, c.triggerWait(), c.aliveEvery(), fires, reads, stop)

	watchdog := time.NewTimer(c.cfg.ReadTimeout)
	defer watchdog.Stop()
	var size image.Point
	for {
		var fire chan *fireReq // nil (never ready) while one is pending
		if pending == nil {
			fire = c.fire
		}
		select {
		case <-ctx.Done():
			return delivered, ctx.Err()
		case <-watchdog.C:
			c.stalls.Add(1)
			if pending != nil {
				return delivered, fmt.Errorf("no frame within %s of the trigger: connection abandoned", c.cfg.ReadTimeout)
			}
			return delivered, fmt.Errorf("the camera did not answer for %s: connection abandoned", c.cfg.ReadTimeout)
		case req := <-fire:
			pending = req
			fires <- struct{}{} // never blocks: one request at a time
			watchdog.Reset(c.cfg.ReadTimeout)
		case r := <-reads:
			if r.strays > 0 {
				if n := c.untriggered.Add(r.strays); n == r.strays {
					c.log.Warn("capture: the camera sends frames without a trigger (discarded; check its TriggerMode)", "frames", n)
				}
			}
			if r.err != nil {
				r.mat.Close()
				if _, ok := errors.AsType[*RefusedError](r.err); ok {
					c.refused.Add(1)
				}
				return delivered, r.err
			}
			watchdog.Reset(c.cfg.ReadTimeout)
			if r.beat {
				r.mat.Close()
				c.ready.Store(true)
				continue
			}
			req := pending
			pending = nil
			mat, why := c.prepare(r.mat, &size)
			if why != "" {
				n := c.bad.Add(1)
				level := slog.LevelDebug
				if n == 1 {
					level = slog.LevelWarn
				}
				c.log.Log(ctx, level, "capture: bad frame skipped", "why", why, "bad", n)
				req.done <- errors.New("bad frame: " + why)
				continue
			}
			if first != nil {
				first()
				first = nil
			}
			c.seq++
			if !c.handOn(ctx, Frame{Camera: c.cfg.Name, Seq: c.seq, Time: r.at, Mat: mat}) {
				req.done <- ctx.Err()
				return delivered, ctx.Err()
			}
			c.frames.Add(1)
			delivered++
			req.done <- nil
		}
	}
}

// readLoopTriggered opens a genicam source in software trigger mode and
// serves the session: a frame for each value on fires, and a beat after
// the opening and after each liveness check. Like readLoop it owns the
// connection and returns after an error or once stop is closed.
func readLoopTriggered(s Spec, g Genicam, wait, every time.Duration, fires <-chan struct{}, reads chan<- read, stop <-chan struct{}) {
	send := func(r read) bool {
		select {
		case reads <- r:
			return r.err == nil
		case <-stop:
			r.mat.Close()
			return false
		}
	}
	src, err := openGenicamTriggered(s.Target, g, wait)
	if err != nil {
		send(read{mat: gocv.NewMat(), err: err})
		return
	}
	defer src.Close()
	if !send(read{mat: gocv.NewMat(), beat: true}) {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	var strays uint64
	for {
		select {
		case <-stop:
			return
		case <-fires:
			m := gocv.NewMat()
			err := src.Fire(&m)
			n := src.Strays()
			if !send(read{mat: m, err: err, at: time.Now(), strays: n - strays}) {
				return
			}
			strays = n
		case <-tick.C:
			if !send(read{mat: gocv.NewMat(), beat: true, err: src.Alive()}) {
				return
			}
		}
	}
}
