package main

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"gnld/publish"
)

// Liveness, readiness and systemd's watchdog.
//
// Each camera's worker beats: after every frame it finishes and, while it
// waits for frames, every liveWindow/2 from its own loop. A worker that
// has not beaten for liveWindow is stuck (inside the interpreter, say) or
// gone. While every worker is alive, a beat also sends systemd's WATCHDOG=1
// (at most one per WatchdogSec/2): keep-alives come from the workers
// themselves, so a stuck interpreter or a dead worker stops them and
// systemd restarts gnld within WatchdogSec (or WatchdogSec + liveWindow
// when other cameras are still working).

// keepAliveWhileStopping sends the keep-alives itself from the start of
// the shutdown until the returned stop is called: systemd keeps the
// watchdog armed while a service stops, the workers stop beating once
// their cameras have stopped, and the shutdown (waiting for the broker to
// take the spool) may last GNLD_SHUTDOWN_TIMEOUT and more. gnld's own
// shutdown deadline, not the watchdog, bounds it.
func (d *daemon) keepAliveWhileStopping() (stop func()) {
	w := d.notify.WatchdogSec()
	if w == 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(w / 4)
		defer t.Stop()
		for {
			d.notify.Watchdog()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done) }
}

// testStall, set only by tests, is called by a worker before it scores
// each frame; a test makes it block to stall inference.
var testStall func(camera string)

// noWatchdogWindow is liveWindow when systemd's watchdog is off.
const noWatchdogWindow = 30 * time.Second

// Daemon states, for /readyz and STATUS.
const (
	stateStarting int32 = iota
	stateRunning
	stateStopping
)

// liveWindow is how long a worker may go without a beat: WatchdogSec/2
// under systemd's watchdog, else noWatchdogWindow.
func (d *daemon) liveWindow() time.Duration {
	if w := d.notify.WatchdogSec(); w > 0 {
		return w / 2
	}
	return noWatchdogWindow
}

// clock is the time since the daemon was made, in nanoseconds, on the
// monotonic clock: beats and frame times are compared with it, never with
// the wall clock, which jumps when the system clock is set (NTP, an
// RTC-less device at boot, a technician).
func (d *daemon) clock() int64 { return int64(time.Since(d.epoch)) }

// beat records that c's worker is alive and, when every worker is, sends
// systemd's keep-alive.
func (d *daemon) beat(c *camera) {
	now := d.clock()
	c.beat.Store(now)
	if d.notify.WatchdogSec() > 0 && len(d.stuck(now)) == 0 {
		d.notify.Watchdog()
	}
}

// stuck names the workers that have not beaten for liveWindow before now
// (a clock() reading).
func (d *daemon) stuck(now int64) []string {
	var out []string
	window := d.liveWindow()
	for _, c := range d.cams {
		if c.done.Load() {
			continue
		}
		if idle := time.Duration(now - c.beat.Load()); idle > window {
			out = append(out, fmt.Sprintf("camera %s: worker stuck: no frame finished and not waiting for frames for %s (limit %s)",
				c.cap.Name(), idle.Round(time.Millisecond), window))
		}
	}
	return out
}

// unready says why gnld is not doing its whole job at now (a clock()
// reading); nil when it is.
func (d *daemon) unready(now int64) []string {
	switch d.state.Load() {
	case stateStarting:
		return []string{"starting: loading the model and connecting to the broker"}
	case stateStopping:
		return []string{"stopping"}
	}
	out := d.stuck(now)
	if st := d.pub.Stats(); !st.Connected {
		out = append(out, fmt.Sprintf("mqtt: not connected to %s; results go to the spool (%d waiting)", publish.RedactURL(d.cfg.MQTTBroker), st.SpoolLen))
	}
	for _, c := range d.cams {
		if c.done.Load() {
			continue
		}
		if since := time.Duration(now - c.lastFrame.Load()); since > d.cfg.ReadTimeout {
			out = append(out, fmt.Sprintf("camera %s: no frame for %s (source reconnecting; %d reconnects so far)",
				c.cap.Name(), since.Round(time.Second), c.cap.Stats().Reconnects))
		}
	}
	return out
}

// healthz is liveness: 503 only when a worker is stuck, which a restart
// fixes. A broker or camera that is away is not a liveness problem.
func (d *daemon) healthz(w http.ResponseWriter, r *http.Request) {
	reply(w, d.stuck(d.clock()), "ok", "not ok")
}

// readyz is readiness: 503 while starting or stopping, or when the
// broker, a camera or a worker is not working.
func (d *daemon) readyz(w http.ResponseWriter, r *http.Request) {
	reply(w, d.unready(d.clock()), "ready", "not ready")
}

func reply(w http.ResponseWriter, problems []string, ok, notOK string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if len(problems) == 0 {
		fmt.Fprintln(w, ok)
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "%s: %s\n", notOK, strings.Join(problems, "\n"))
}

// lastScore keeps a camera's last score and verdict for STATUS.
type lastScore struct{ bits atomic.Uint64 } // float64 bits; NaN: none yet

func (l *lastScore) set(v float64) { l.bits.Store(math.Float64bits(v)) }
func (l *lastScore) get() float64  { return math.Float64frombits(l.bits.Load()) }
