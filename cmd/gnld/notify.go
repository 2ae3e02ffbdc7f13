package main

import (
	"fmt"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
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

// reload is what SIGHUP does, between RELOADING=1 and READY=1. The hot
// model swap (issue 9, item 3) fills it in; until then there is nothing
// to reload.
func (d *daemon) reload() error {
	d.log.Info("gnld: reload requested (SIGHUP); nothing to reload")
	return nil
}

// handleReloads catches SIGHUP until the returned stop is called: each
// one runs reload between RELOADING=1 and READY=1. A failed reload is
// logged and reported in STATUS; gnld keeps running as it was.
func (d *daemon) handleReloads() (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
			}
			if d.state.Load() != stateRunning {
				d.log.Info("gnld: SIGHUP ignored while starting or stopping")
				continue
			}
			d.notify.Reloading("reloading")
			if err := d.reload(); err != nil {
				d.log.Error("gnld: reload failed; carrying on as before", "err", err)
				d.notify.Ready("reload failed, carrying on as before: " + err.Error())
				continue
			}
			d.notify.Ready(d.statusLine(nil))
		}
	}()
	return func() { signal.Stop(hup); close(done) }
}
