package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
)

// systemd notifications (Type=notify): READY=1 once the model is loaded and
// the broker tried, STATUS= every statusEvery, RELOADING=1 ... READY=1
// around a reload (SIGHUP, ExecReload=), STOPPING=1. The keep-alives
// (WATCHDOG=1) come from the workers: see health.go.

// statusEvery is the period of the STATUS= line; tests shorten it.
var statusEvery = 10 * time.Second

// rates remembers the counters of the last STATUS line, for frames/s.
type rates struct {
	at     time.Time
	scored []uint64
}

// statusLine is one line for `systemctl status`: per camera frames/s and
// the last score, then the broker and spool.
func (d *daemon) statusLine(prev *rates) string {
	now := time.Now()
	var parts []string
	next := rates{at: now, scored: make([]uint64, len(d.cams))}
	for i, c := range d.cams {
		n := c.processed.Load()
		next.scored[i] = n
		s := c.cap.Name() + ":"
		if prev != nil && len(prev.scored) == len(d.cams) && now.After(prev.at) {
			s += fmt.Sprintf(" %.1f frames/s,", float64(n-prev.scored[i])/now.Sub(prev.at).Seconds())
		}
		switch score := c.score.get(); {
		case c.done.Load():
			s += fmt.Sprintf(" finished after %d frames", n)
		case math.IsNaN(score):
			s += " no frame yet"
		default:
			verdict := "normal"
			if c.lastAnomalous.Load() {
				verdict = "ANOMALOUS"
			}
			s += fmt.Sprintf(" last score %.3g %s", score, verdict)
		}
		parts = append(parts, s)
	}
	if prev != nil {
		*prev = next
	}
	st := d.pub.Stats()
	broker := "mqtt connected"
	if !st.Connected {
		broker = "mqtt NOT connected"
	}
	return fmt.Sprintf("%s; %s, spool %d", strings.Join(parts, "; "), broker, st.SpoolLen)
}

// reportStatus sends STATUS= every statusEvery until stop is closed.
func (d *daemon) reportStatus(stop <-chan struct{}) {
	if !d.notify.Enabled() {
		return
	}
	var prev rates
	d.statusLine(&prev) // the baseline for the first frames/s
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d.notify.Status(d.statusLine(&prev))
		}
	}
}

// reloadNotified runs reload (model.go) between RELOADING=1 and READY=1;
// reload logs its own outcome. A refused reload is reported in STATUS and
// gnld carries on with the model it had.
func (d *daemon) reloadNotified(ctx context.Context) {
	d.notify.Reloading("reloading the model")
	if err := d.reload(ctx); err != nil {
		d.notify.Ready("reload refused, the old model keeps serving: " + err.Error())
		return
	}
	d.notify.Ready(d.statusLine(nil))
}
