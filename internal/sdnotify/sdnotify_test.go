package sdnotify

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Listen makes a real unixgram NOTIFY_SOCKET, as systemd does, and points
// the environment at it.
func listen(t *testing.T) *net.UnixConn {
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "400000") // 400 ms
	t.Setenv("WATCHDOG_PID", "")
	n := New(slog.New(slog.DiscardHandler))
	if !n.Enabled() || n.WatchdogSec() != 400*time.Millisecond {
		t.Fatalf("enabled %v, watchdog %v", n.Enabled(), n.WatchdogSec())
	}
	n.Ready("ready: 1 camera")
	if got := recv(t, c); got != "READY=1\nSTATUS=ready: 1 camera" {
		t.Errorf("ready: %q", got)
	}
	n.Reloading("reloading\nmodel")
	if got := recv(t, c); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") || !strings.HasSuffix(got, "\nSTATUS=reloading model") {
		t.Errorf("reloading: %q", got)
	}
	n.Status("5.0 frames/s")
	if got := recv(t, c); got != "STATUS=5.0 frames/s" {
		t.Errorf("status: %q", got)
	}
	n.Stopping("")
	if got := recv(t, c); got != "STOPPING=1" {
		t.Errorf("stopping: %q", got)
	}
	// Watchdog: one keep-alive per WatchdogSec/2, however often it is
	// called. Each send happens between the call's start and its return.
	type span struct{ start, end time.Time }
	var sends []span
	for start := time.Now(); time.Since(start) < 700*time.Millisecond; time.Sleep(time.Millisecond) {
		t0 := time.Now()
		if n.Watchdog() {
			sends = append(sends, span{t0, time.Now()})
			if got := recv(t, c); got != "WATCHDOG=1" {
				t.Errorf("watchdog: %q", got)
			}
		}
	}
	if len(sends) < 3 {
		t.Errorf("%d keep-alives in 700 ms with WatchdogSec=400ms, want one per 200 ms", len(sends))
	}
	for i := 1; i < len(sends); i++ {
		if gap := sends[i].end.Sub(sends[i-1].start); gap < 200*time.Millisecond {
			t.Errorf("keep-alives at most %v apart, want at least WatchdogSec/2", gap)
		}
	}
}

// Another process's watchdog (WATCHDOG_PID not ours), or no socket at all:
// nothing is sent and nothing fails.
func TestOff(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "400000")
	t.Setenv("WATCHDOG_PID", "1")
	if n := New(slog.New(slog.DiscardHandler)); n.WatchdogSec() != 0 || n.Watchdog() {
		t.Error("watchdog on for another pid")
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 10)); err == nil {
		t.Error("something was sent")
	}
	os.Unsetenv("NOTIFY_SOCKET")
	n := New(slog.New(slog.DiscardHandler))
	n.Ready("x")
	if n.Enabled() || n.Watchdog() {
		t.Error("enabled without NOTIFY_SOCKET")
	}
}
