// Package sdnotify tells systemd how gnld is doing, over the sd_notify
// protocol (github.com/coreos/go-systemd/v22/daemon): READY=1 once started,
// RELOADING=1 ... READY=1 around a reload, STOPPING=1, STATUS= lines, and
// WATCHDOG=1 keep-alives.
//
// Without NOTIFY_SOCKET (not run by systemd, or Type= is not notify) every
// call does nothing. The watchdog is on when systemd sets WATCHDOG_USEC
// (the unit's WatchdogSec=) for this process.
//
// Watchdog is meant to be called from the work it vouches for (gnld: each
// camera's worker, after each frame), never from a timer of its own: when
// that work stops, the keep-alives stop and systemd restarts gnld. It
// sends at most one WATCHDOG=1 per WatchdogSec/2, so it is cheap to call
// per frame. All methods are safe for concurrent use.
package sdnotify

import (
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends notifications to systemd.
type Notifier struct {
	log      *slog.Logger
	on       bool          // NOTIFY_SOCKET was set at start
	watchdog time.Duration // WatchdogSec; 0: off
	// next is when Watchdog may send again, in nanoseconds since start on
	// the monotonic clock: a system clock set back (NTP, an RTC-less
	// device at boot) must not hold back the keep-alives.
	start  time.Time
	next   atomic.Int64
	failed atomic.Bool // a send failed (logged once)
}

// New reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
func New(log *slog.Logger) *Notifier {
	n := &Notifier{log: log, on: os.Getenv("NOTIFY_SOCKET") != "", start: time.Now()}
	if !n.on {
		return n
	}
	w, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd: watchdog settings not understood; no keep-alives sent", "err", err)
	}
	n.watchdog = w
	return n
}

// Enabled reports whether systemd is listening.
func (n *Notifier) Enabled() bool { return n.on }

// WatchdogSec is systemd's watchdog timeout; 0 when the watchdog is off.
func (n *Notifier) WatchdogSec() time.Duration { return n.watchdog }

// Ready says start-up (or a reload) has finished.
func (n *Notifier) Ready(status string) { n.send(daemon.SdNotifyReady, status) }

// Reloading says a reload has begun; Ready must follow when it ends.
func (n *Notifier) Reloading(status string) {
	n.send(daemon.SdNotifyReloading+"\n"+strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"), status)
}

// Stopping says shutdown has begun.
func (n *Notifier) Stopping(status string) { n.send(daemon.SdNotifyStopping, status) }

// Status sets the one-line status `systemctl status` shows.
func (n *Notifier) Status(status string) { n.send("", status) }

// Watchdog sends WATCHDOG=1 unless one was sent less than WatchdogSec/2
// ago. It reports whether it sent one.
func (n *Notifier) Watchdog() bool {
	if n.watchdog == 0 {
		return false
	}
	now := int64(time.Since(n.start))
	next := n.next.Load()
	if now < next || !n.next.CompareAndSwap(next, now+int64(n.watchdog/2)) {
		return false
	}
	n.send(daemon.SdNotifyWatchdog, "")
	return true
}

// send writes one datagram: state (may be empty) and STATUS=status (when
// not empty, on one line).
func (n *Notifier) send(state, status string) {
	if !n.on {
		return
	}
	var lines []string
	if state != "" {
		lines = append(lines, state)
	}
	if status != "" {
		lines = append(lines, "STATUS="+strings.ReplaceAll(status, "\n", " "))
	}
	if len(lines) == 0 {
		return
	}
	if _, err := daemon.SdNotify(false, strings.Join(lines, "\n")); err != nil && n.failed.CompareAndSwap(false, true) {
		n.log.Warn("systemd: notification failed (reported once)", "socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}
