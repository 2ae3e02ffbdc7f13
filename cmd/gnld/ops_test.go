package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"gnld/internal/testbroker"
	"gnld/models"
	"gnld/publish"
)

// notifySocket is a real unixgram NOTIFY_SOCKET, as systemd makes, that
// records every datagram with its arrival time.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []notifyMsg
}

type notifyMsg struct {
	at   time.Time
	text string
}

func listenNotify(t *testing.T) *notifySocket {
	// Unix socket paths are limited to 108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "gnld-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifySocket{path: filepath.Join(dir, "notify")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, notifyMsg{time.Now(), string(buf[:k])})
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) all() []notifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]notifyMsg(nil), n.msgs...)
}

// with returns the messages that have a line starting with prefix.
func (n *notifySocket) with(prefix string) []notifyMsg {
	var out []notifyMsg
	for _, m := range n.all() {
		for l := range strings.Lines(m.text) {
			if strings.HasPrefix(l, prefix) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// waitFor polls until ok or the timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

// scrape GETs /metrics over real HTTP and parses it with Prometheus's
// text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mf
}

// metric returns the value (counter, gauge, or a histogram's count) of
// the series of name with the given labels; -1 if it is missing.
func metric(mf map[string]*dto.MetricFamily, name string, labels ...string) float64 {
next:
	for _, m := range mf[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// get returns the status code and body of GET url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A folder camera runs to its end and gnld stays up (GNLD_EXIT_WHEN_DONE
// false). /metrics then holds exactly what the broker received; /healthz
// and /readyz are ok; with the broker gone, /readyz says so and /healthz
// stays ok.
func TestHTTPMetricsAndHealth(t *testing.T) {
	dir, files := mtdSamples(t, 3, "good", "crack")
	os.WriteFile(filepath.Join(dir, "99-corrupt.jpg"), []byte("\xff\xd8 not really"), 0o644)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	port := testbroker.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err, log := runGnld(t, ctx, baseEnv(t, b.URL(), map[string]string{
			"GNLD_CAMERAS": "bench=dir:" + dir, "GNLD_EXIT_WHEN_DONE": "false", "GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port),
		}))
		if err != nil {
			t.Errorf("gnld: %v\n%s", err, log)
		}
		done <- err
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, 20*time.Second, "every result", func() bool { return len(results(t, sub, "bench")) == len(files) })
	var mf map[string]*dto.MetricFamily
	waitFor(t, 5*time.Second, "the worker to finish", func() bool {
		mf = scrape(t, base)
		return metric(mf, "gnld_frames_scored_total", "camera", "bench") == float64(len(files))
	})
	got := results(t, sub, "bench")
	anomalies := 0
	for _, r := range got {
		if r.Verdict == "anomalous" {
			anomalies++
		}
	}
	last := got[len(got)-1]
	bundle, err := models.Load(tinyBundle)
	if err != nil {
		t.Fatal(err)
	}
	m := bundle.Meta
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"gnld_frames_captured_total", []string{"camera", "bench"}, float64(len(files))},
		{"gnld_frames_bad_total", []string{"camera", "bench"}, 1},
		{"gnld_frames_dropped_total", []string{"camera", "bench"}, 0},
		{"gnld_frames_skipped_total", []string{"camera", "bench"}, 0},
		{"gnld_anomalies_total", []string{"camera", "bench"}, float64(anomalies)},
		{"gnld_source_reconnects_total", []string{"camera", "bench"}, 0},
		{"gnld_score", []string{"camera", "bench"}, float64(last.Score)},
		{"gnld_threshold", []string{"camera", "bench"}, float64(last.Threshold)},
		{"gnld_score_ratio", []string{"camera", "bench"}, float64(len(files))},
		{"gnld_stage_duration_seconds", []string{"camera", "bench", "stage", "invoke"}, float64(len(files))},
		{"gnld_stage_duration_seconds", []string{"camera", "bench", "stage", "total"}, float64(len(files))},
		{"gnld_model_info", []string{"name", m.Name, "version", m.Version, "sha256", m.ModelSHA256}, 1},
		{"gnld_mqtt_connected", nil, 1},
		{"gnld_results_published_total", nil, float64(len(files))},
		{"gnld_spool_length", nil, 0},
		{"gnld_mqtt_disconnects_total", nil, 0},
	} {
		if v := metric(mf, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if anomalies == 0 || anomalies == len(files) {
		t.Logf("note: %d of %d anomalous; the anomaly count is checked against the broker either way", anomalies, len(files))
	}
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if resp, err := http.Post(base+"/metrics", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %v %v, want 405", resp, err)
	}

	b.Stop()
	waitFor(t, 10*time.Second, "readyz to notice the broker is gone", func() bool {
		code, body := get(t, base+"/readyz")
		return code == 503 && strings.Contains(body, "not ready: mqtt: not connected to "+b.URL())
	})
	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz with the broker gone: %d %q, want 200 (a restart would not help)", code, body)
	}
	mf = scrape(t, base)
	if metric(mf, "gnld_mqtt_connected") != 0 || metric(mf, "gnld_mqtt_disconnects_total") != 1 {
		t.Errorf("after the broker stopped: connected %v, disconnects %v", metric(mf, "gnld_mqtt_connected"), metric(mf, "gnld_mqtt_disconnects_total"))
	}
}

// A taken port stops start-up with one line naming the variable.
func TestHTTPAddrTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	setEnv(t, map[string]string{
		"GNLD_CAMERAS": "a=dir:" + t.TempDir(), "GNLD_MODEL_DIR": tinyBundle, "GNLD_SPOOL_DIR": t.TempDir(),
		"GNLD_HTTP_ADDR": ln.Addr().String(),
	})
	err = run(context.Background(), nil, io.Discard, io.Discard)
	want := "GNLD_HTTP_ADDR=" + ln.Addr().String() + ": http listener: listen tcp " + ln.Addr().String() + ": bind: address already in use"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// systemd's protocol on a real NOTIFY_SOCKET with gnld running in-process:
// READY=1 once started, STATUS= lines, WATCHDOG=1 from the workers,
// RELOADING=1 .. READY=1 on SIGHUP, STOPPING=1. Then one of two cameras
// stalls inside its worker: the keep-alives stop, so systemd would restart
// gnld within WatchdogSec (plus the liveness window, as the other camera
// keeps working), and /healthz names the stuck camera; released, they
// resume.
func TestNotifyWatchdogStall(t *testing.T) {
	dir, _ := mtdSamples(t, 2, "good")
	b := testbroker.Start(t)
	sock := listenNotify(t)
	const watchdog = time.Second
	t.Setenv("NOTIFY_SOCKET", sock.path)
	t.Setenv("WATCHDOG_USEC", fmt.Sprint(watchdog.Microseconds()))
	t.Setenv("WATCHDOG_PID", "")
	statusEvery = 300 * time.Millisecond
	defer func() { statusEvery = 10 * time.Second }()

	var stall atomic.Bool
	var stalledAt atomic.Int64
	release := make(chan struct{})
	testStall = func(camera string) {
		if camera == "a" && stall.Load() {
			stalledAt.CompareAndSwap(0, time.Now().UnixNano())
			<-release
		}
	}
	defer func() { testStall = nil }()

	port := testbroker.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	env := baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "a=dir:" + dir + ",b=dir:" + dir, "GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port), "GNLD_LOG_LEVEL": "info",
		"GNLD_CAMERA_A_LOOP": "true", "GNLD_CAMERA_A_FPS": "20", "GNLD_CAMERA_B_LOOP": "true", "GNLD_CAMERA_B_FPS": "20",
		"GNLD_SHUTDOWN_TIMEOUT": fmt.Sprint(2 * watchdog),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := time.Now()
	go func() {
		err, log := runGnld(t, ctx, env)
		if err != nil {
			t.Errorf("gnld: %v\n%s", err, log)
		}
		done <- err
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	waitFor(t, 10*time.Second, "READY=1", func() bool { return len(sock.with("READY=1")) > 0 })
	ready := sock.with("READY=1")[0]
	if !strings.HasPrefix(ready.text, "READY=1\nSTATUS=a: ") || !strings.HasSuffix(ready.text, "; mqtt connected, spool 0") {
		t.Errorf("READY=1 datagram %q: want the status with the broker connected", ready.text)
	}
	t.Logf("READY=1 %s after start", ready.at.Sub(started).Round(time.Millisecond))

	// Running: keep-alives WatchdogSec/2 apart or a little more (the next
	// beat), never WatchdogSec. Arrival times jitter, so the lower bound
	// only shows they are rate-limited (unlimited, they would come with
	// every frame, 25-50 ms apart).
	time.Sleep(3 * watchdog)
	pings := sock.with("WATCHDOG=1")
	if len(pings) < 4 {
		t.Fatalf("%d WATCHDOG=1 in %s with WatchdogSec=%s", len(pings), 3*watchdog, watchdog)
	}
	for i := 1; i < len(pings); i++ {
		if gap := pings[i].at.Sub(pings[i-1].at); gap < watchdog/4 || gap >= watchdog {
			t.Errorf("keep-alives %s apart; want WatchdogSec/2 (%s) or a little more, below WatchdogSec", gap, watchdog/2)
		}
	}
	st := sock.with("STATUS=")
	lastStatus := st[len(st)-1].text
	if !strings.Contains(lastStatus, "a: ") || !strings.Contains(lastStatus, " frames/s, last score ") || !strings.Contains(lastStatus, "mqtt connected, spool 0") {
		t.Errorf("STATUS %q: want frames/s, last score, broker", lastStatus)
	}
	t.Logf("%d STATUS lines, last %q", len(st), lastStatus)

	// SIGHUP: RELOADING=1, then READY=1.
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, 5*time.Second, "READY=1 after RELOADING=1", func() bool { return len(sock.with("READY=1")) == 2 })
	reloading := sock.with("RELOADING=1")
	if len(reloading) != 1 || !strings.Contains(reloading[0].text, "\nMONOTONIC_USEC=") || reloading[0].at.After(sock.with("READY=1")[1].at) {
		t.Errorf("reload: RELOADING=1 %v, then READY=1", reloading)
	}

	// Stall camera a.
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz before the stall: %d", code)
	}
	stall.Store(true)
	waitFor(t, 2*time.Second, "the stall", func() bool { return stalledAt.Load() != 0 })
	stallStart := time.Unix(0, stalledAt.Load())
	time.Sleep(3 * watchdog)
	var lastPing time.Time
	for _, p := range sock.with("WATCHDOG=1") {
		lastPing = p.at
	}
	trip := lastPing.Add(watchdog) // when systemd would restart gnld
	t.Logf("stall at %s; last WATCHDOG=1 %s after it; systemd (WatchdogSec=%s) would trip %s after the stall",
		stallStart.Sub(started).Round(time.Millisecond), lastPing.Sub(stallStart).Round(time.Millisecond), watchdog,
		trip.Sub(stallStart).Round(time.Millisecond))
	if limit := watchdog + watchdog/2; trip.Sub(stallStart) > limit {
		t.Errorf("systemd would trip %s after the stall, want at most %s", trip.Sub(stallStart), limit)
	}
	if time.Since(lastPing) < 2*watchdog {
		t.Errorf("keep-alives went on during the stall")
	}
	code, body := get(t, base+"/healthz")
	if code != 503 || !strings.HasPrefix(body, "not ok: camera a: worker stuck: no frame finished and not waiting for frames for ") {
		t.Errorf("/healthz during the stall: %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "camera a: worker stuck") {
		t.Errorf("/readyz during the stall: %d %q", code, body)
	}

	// Released: keep-alives resume.
	n := len(sock.with("WATCHDOG=1"))
	close(release)
	waitFor(t, 2*time.Second, "keep-alives again", func() bool { return len(sock.with("WATCHDOG=1")) > n })
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz after the stall: %d", code)
	}

	// A slow shutdown: the broker is away with results in the spool, so
	// gnld waits GNLD_SHUTDOWN_TIMEOUT (2 x WatchdogSec) for it. systemd
	// keeps the watchdog armed while a service stops: keep-alives go on
	// until gnld exits.
	b.Stop()
	waitFor(t, 5*time.Second, "results in the spool", func() bool {
		return metric(scrape(t, base), "gnld_spool_length") > 0
	})
	cancel()
	<-done
	exited := time.Now()
	stopped = true
	stopping := sock.with("STOPPING=1")
	if len(stopping) != 1 {
		t.Fatalf("%d STOPPING=1, want 1", len(stopping))
	}
	last := stopping[0].at
	for _, p := range sock.with("WATCHDOG=1") {
		if p.at.After(stopping[0].at) {
			if gap := p.at.Sub(last); gap >= watchdog {
				t.Errorf("while stopping, keep-alives %s apart (WatchdogSec %s)", gap, watchdog)
			}
			last = p.at
		}
	}
	if gap := exited.Sub(last); gap >= watchdog {
		t.Errorf("last keep-alive %s before gnld exited (WatchdogSec %s)", gap, watchdog)
	}
	t.Logf("shutdown took %s; keep-alives until %s before exit", exited.Sub(stopping[0].at).Round(time.Millisecond), exited.Sub(last).Round(time.Millisecond))
}

// The real binary under a real NOTIFY_SOCKET, as systemd runs it: with the
// broker down READY=1 still comes, once the broker has been tried for
// GNLD_MQTT_TIMEOUT; then keep-alives, SIGHUP (RELOADING=1 .. READY=1),
// SIGTERM (STOPPING=1, exit 0).
func TestBinaryNotify(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir, _ := mtdSamples(t, 3, "good")
	bin := buildGnld(t)
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	b.Stop()
	sock := listenNotify(t)
	env := baseEnv(t, b.URL(), map[string]string{
		"GNLD_CAMERAS": "loop=dir:" + dir, "GNLD_CAMERA_LOOP_LOOP": "true", "GNLD_CAMERA_LOOP_FPS": "20",
		"GNLD_LOG_LEVEL": "info", "GNLD_MQTT_TIMEOUT": "1s",
	})
	cmd := exec.Command(bin)
	cmd.Env = append(environ(env), "NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC=1000000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Generous: the binary starts slowly on a loaded machine.
	waitFor(t, 30*time.Second, "READY=1", func() bool { return len(sock.with("READY=1")) > 0 })
	ready := sock.with("READY=1")[0]
	if wait := ready.at.Sub(start); wait < time.Second || !strings.Contains(ready.text, "mqtt NOT connected") {
		t.Errorf("READY=1 %s after start (%q); want it after the 1s broker try, saying the broker is away", wait, ready.text)
	}
	b.Restart()
	sub.WaitFor(t, 10*time.Second, "results", func([]testbroker.Msg) bool { return len(sub.On("/loop/result")) >= 5 })
	waitFor(t, 3*time.Second, "keep-alives", func() bool { return len(sock.with("WATCHDOG=1")) >= 3 })

	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "READY=1 after SIGHUP", func() bool { return len(sock.with("READY=1")) == 2 })
	if r := sock.with("RELOADING=1"); len(r) != 1 || r[0].at.After(sock.with("READY=1")[1].at) {
		t.Errorf("RELOADING=1: %v", r)
	}
	// Results go on across the reload.
	n := len(sub.On("/loop/result"))
	sub.WaitFor(t, 5*time.Second, "results after the reload", func([]testbroker.Msg) bool { return len(sub.On("/loop/result")) > n })

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, stderr.String())
	}
	if s := sock.with("STOPPING=1"); len(s) != 1 {
		t.Errorf("%d STOPPING=1", len(s))
	}
	var seqs []uint64
	for _, m := range sub.On("/loop/result") {
		var r publish.Result
		json.Unmarshal(m.Payload, &r)
		seqs = append(seqs, r.Sequence)
	}
	t.Logf("%d datagrams; %d results; stderr:\n%s", len(sock.all()), len(seqs), stderr.String())
}
