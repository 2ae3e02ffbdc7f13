package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gnld/internal/testbroker"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func TestSpoolOrderRestartAndOverflow(t *testing.T) {
	dir := t.TempDir()
	log := testLogger(t)
	s, err := openSpool(dir, 3, log)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 { // 0 and 1 are dropped: the spool holds 3
		if err := s.push(Message{Topic: "t", Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if s.len() != 3 || s.drops.Load() != 2 {
		t.Fatalf("len %d drops %d, want 3 and 2", s.len(), s.drops.Load())
	}
	os.WriteFile(filepath.Join(dir, "0000000000000000009.msg.tmp"), []byte("half"), 0o640)

	// A new process finds the same messages, oldest first, and the
	// half-written one is gone.
	s, err = openSpool(dir, 3, log)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, ok := s.peek()
		if !ok {
			break
		}
		got = append(got, m.Topic+":"+string(m.Payload))
		s.pop()
	}
	if fmt.Sprint(got) != "[t:m2 t:m3 t:m4]" {
		t.Errorf("replayed %v", got)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
	// Numbering goes on after the old messages, so order survives restarts.
	s.push(Message{Topic: "t", Payload: []byte("x")})
	if s.seqs[0] != 6 {
		t.Errorf("next sequence %d, want 6", s.seqs[0])
	}
}

func testConfig(t *testing.T, broker string) Config {
	return Config{
		Broker: broker, ClientID: "gnld-test", QoS: 1, Site: "s", Device: "dev",
		Timeout: 2 * time.Second, ReconnectMax: 500 * time.Millisecond,
		SpoolDir: filepath.Join(t.TempDir(), "spool"), SpoolMax: 1000,
	}
}

// startPublisher makes a Publisher for cfg, connects it and starts its
// sender (runPublisher).
func startPublisher(t *testing.T, cfg Config) (p *Publisher, closeAndWait func()) {
	p, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Connect()
	return p, runPublisher(t, p)
}

// runPublisher starts p's sender and returns a func that closes p and
// waits for Run to return. As in gnld, Run gets a hard deadline (here 1s
// after Close) to wait for the broker to take the spool.
func runPublisher(t *testing.T, p *Publisher) (closeAndWait func()) {
	done := make(chan struct{})
	hard, giveUp := context.WithCancel(context.Background())
	t.Cleanup(giveUp)
	go func() { p.Run(hard); close(done) }()
	return func() {
		p.Close()
		time.AfterFunc(time.Second, giveUp)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after Close")
		}
	}
}

func result(cam string, seq uint64) Result {
	return Result{RunID: "r", Camera: cam, Sequence: seq, Timestamp: time.Now(), Score: 0.5, Threshold: 0.9, Verdict: Verdict(false)}
}

// sequences decodes results on topic suffix and returns the sequence
// numbers, de-duplicated, in first-arrival order.
func sequences(t *testing.T, msgs []testbroker.Msg) []uint64 {
	seen := map[uint64]bool{}
	var out []uint64
	for _, m := range msgs {
		var r Result
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatalf("payload %q: %v", m.Payload, err)
		}
		if !seen[r.Sequence] {
			seen[r.Sequence] = true
			out = append(out, r.Sequence)
		}
	}
	return out
}

func checkAllInOrder(t *testing.T, seqs []uint64, n int) {
	t.Helper()
	if len(seqs) != n {
		t.Fatalf("%d distinct results, want %d: %v", len(seqs), n, seqs)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("result %d has sequence %d: order lost: %v", i, s, seqs)
		}
	}
}

func TestPublishStatusResultsStats(t *testing.T) {
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	cfg := testConfig(t, b.URL())
	cfg.StatsInterval = 100 * time.Millisecond
	cfg.StatsExtra = func() any { return map[string]int{"cam": 1} }
	p, closeAndWait := startPublisher(t, cfg)
	for i := range 20 {
		p.Result(result("cam", uint64(i+1)))
	}
	p.Map("cam", []byte{1, 2, 3})
	sub.WaitFor(t, 5*time.Second, "20 results and stats", func([]testbroker.Msg) bool {
		return len(sub.On("/cam/result")) == 20 && len(sub.On("/dev/stats")) > 0
	})
	closeAndWait()
	sub.WaitFor(t, 5*time.Second, "offline", func([]testbroker.Msg) bool {
		st := sub.On("gnl/s/dev/status")
		return len(st) > 0 && string(st[len(st)-1].Payload) == "offline"
	})
	checkAllInOrder(t, sequences(t, sub.On("/cam/result")), 20)
	if st := sub.On("gnl/s/dev/status"); string(st[0].Payload) != "online" {
		t.Errorf("first status %q, want online", st[0].Payload)
	}
	if m := sub.On("/cam/map"); len(m) != 1 || m[0].Retained {
		t.Errorf("map messages %v", m)
	}
	var stats map[string]any
	json.Unmarshal(sub.On("/dev/stats")[0].Payload, &stats)
	if stats["cameras"] == nil || stats["mqtt"] == nil {
		t.Errorf("stats %v", stats)
	}
	if s := p.Stats(); s.Published != 20 || s.Spooled != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A broker that is down at start-up and restarted several times while
// results flow: the subscriber ends with every result, once after
// de-duplication, in order; "online" is repeated after each reconnect.
func TestBrokerOutagesLoseNothing(t *testing.T) {
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	b.Stop()

	p, closeAndWait := startPublisher(t, testConfig(t, b.URL())) // broker down: Connect logs, returns after Timeout

	const n = 300
	go func() {
		for i := range n {
			p.Result(result("cam", uint64(i+1)))
			time.Sleep(12 * time.Millisecond) // 300 results over ~4s, across the outages
		}
	}()
	time.Sleep(300 * time.Millisecond)
	for range 3 {
		b.Restart()
		time.Sleep(700 * time.Millisecond)
		b.Stop()
		time.Sleep(200 * time.Millisecond)
	}
	b.Restart()
	sub.WaitFor(t, 20*time.Second, "all results", func([]testbroker.Msg) bool {
		return len(sequences(t, sub.On("/cam/result"))) >= n
	})
	closeAndWait()
	checkAllInOrder(t, sequences(t, sub.On("/cam/result")), n)
	s := p.Stats()
	t.Logf("publisher stats %+v; %d result messages received for %d results", s, len(sub.On("/cam/result")), n)
	if s.Spooled == 0 || s.Disconnects < 2 || s.SpoolLen != 0 {
		t.Errorf("stats %+v: want spooling and several disconnects", s)
	}
	var online int
	for _, m := range sub.On("/dev/status") {
		if string(m.Payload) == "online" {
			online++
		}
	}
	if online < 3 {
		t.Errorf("online published %d times, want one per connect", online)
	}
}

// The connection drops while a result is on its way: sent, not yet
// acknowledged. That result goes through the spool and reaches the
// subscriber before every later one. paho, left to itself, resends it after
// reconnecting and reports the first attempt as acknowledged (see noStore):
// then it was counted as published without an acknowledgement, and arrived
// behind the results sent after the reconnect.
func TestDropDuringPublishKeepsOrder(t *testing.T) {
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	proxy := startCutProxy(t, fmt.Sprintf("127.0.0.1:%d", b.Port))
	cfg := testConfig(t, proxy.url())
	cfg.Timeout = time.Second
	p, closeAndWait := startPublisher(t, cfg)
	for i := range 5 {
		p.Result(result("cam", uint64(i+1)))
	}
	sub.WaitFor(t, 5*time.Second, "5 results", func([]testbroker.Msg) bool { return len(sub.On("/cam/result")) == 5 })
	proxy.cut.Store(true)
	for i := 5; i < 10; i++ {
		p.Result(result("cam", uint64(i+1)))
	}
	sub.WaitFor(t, 15*time.Second, "10 results", func([]testbroker.Msg) bool {
		return len(sequences(t, sub.On("/cam/result"))) >= 10
	})
	closeAndWait()
	checkAllInOrder(t, sequences(t, sub.On("/cam/result")), 10)
	s := p.Stats()
	t.Logf("publisher stats %+v; %d bytes swallowed, %d connections", s, proxy.swallowed.Load(), proxy.conns.Load())
	if proxy.swallowed.Load() == 0 || proxy.conns.Load() < 2 {
		t.Fatalf("the proxy did not cut a publish (%d bytes swallowed, %d connections)", proxy.swallowed.Load(), proxy.conns.Load())
	}
	if s.Unacked != 1 || s.Spooled == 0 || s.Replayed != s.Spooled || s.Published != 10 {
		t.Errorf("stats %+v: want the cut publish unacknowledged, spooled and replayed, 10 published", s)
	}
}

// cutProxy passes TCP connections through to a broker. With cut set, it
// swallows what the client sends next and closes that connection: a
// network that fails just as a publish is on its way. Later connections
// pass again.
type cutProxy struct {
	ln               net.Listener
	cut              atomic.Bool
	swallowed, conns atomic.Int64
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			broker, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			p.conns.Add(1)
			go func() { io.Copy(client, broker); client.Close() }()
			go p.forward(client, broker)
		}
	}()
	return p
}

func (p *cutProxy) url() string { return "tcp://" + p.ln.Addr().String() }

func (p *cutProxy) forward(client, broker net.Conn) {
	defer client.Close()
	defer broker.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if err != nil {
			return
		}
		if p.cut.CompareAndSwap(true, false) {
			p.swallowed.Add(int64(n))
			return
		}
		if _, err := broker.Write(buf[:n]); err != nil {
			return
		}
	}
}

// Results spooled by one run are published by the next.
func TestSpoolSurvivesRestart(t *testing.T) {
	b := testbroker.Start(t)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	b.Stop()
	cfg := testConfig(t, b.URL())
	cfg.Timeout = 300 * time.Millisecond

	p1, _ := New(cfg, testLogger(t))
	p1.Connect()
	closeAndWait := runPublisher(t, p1)
	for i := range 10 {
		p1.Result(result("cam", uint64(i+1)))
	}
	closeAndWait()
	if s := p1.Stats(); s.Spooled != 10 || s.SpoolLen != 10 {
		t.Fatalf("first run stats %+v", s)
	}

	b.Restart()
	p2, _ := New(cfg, testLogger(t))
	p2.Connect()
	closeAndWait = runPublisher(t, p2)
	sub.WaitFor(t, 5*time.Second, "spooled results", func([]testbroker.Msg) bool {
		return len(sub.On("/cam/result")) >= 10
	})
	closeAndWait()
	checkAllInOrder(t, sequences(t, sub.On("/cam/result")), 10)
	if s := p2.Stats(); s.Replayed != 10 || s.SpoolLen != 0 {
		t.Errorf("second run stats %+v", s)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"broker", func(c *Config) { c.Broker = "localhost" }},
		{"qos", func(c *Config) { c.QoS = 3 }},
		{"ca", func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }},
		{"cert", func(c *Config) { c.CertFile, c.KeyFile = "/nonexistent/c.pem", "/nonexistent/k.pem" }},
	} {
		cfg := testConfig(t, "tcp://127.0.0.1:1")
		tc.mod(&cfg)
		if _, err := New(cfg, testLogger(t)); err == nil {
			t.Errorf("%s: no error", tc.name)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// TLS with a CA and a client certificate: results are acknowledged; without
// the client certificate the broker refuses the connection and results
// are spooled.
func TestTLSClientCertificate(t *testing.T) {
	b, files := testbroker.StartTLS(t)
	cfg := testConfig(t, b.URL())
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = files.CA, files.Cert, files.Key
	p, closeAndWait := startPublisher(t, cfg)
	for i := range 5 {
		p.Result(result("cam", uint64(i+1)))
	}
	closeAndWait()
	if s := p.Stats(); s.Published != 5 || s.Spooled != 0 {
		t.Errorf("with client certificate: %+v", s)
	}

	cfg.CertFile, cfg.KeyFile = "", ""
	cfg.Timeout = 500 * time.Millisecond
	cfg.SpoolDir = filepath.Join(t.TempDir(), "spool")
	p, closeAndWait = startPublisher(t, cfg)
	p.Result(result("cam", 1))
	closeAndWait()
	if s := p.Stats(); s.Published != 0 || s.Spooled != 1 {
		t.Errorf("without client certificate: %+v", s)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:1883":              "tcp://127.0.0.1:1883",
		"tcp://user@host:1883":              "tcp://user@host:1883",
		"ssl://user:pa55@host:8883":         "ssl://user:xxxxx@host:8883",
		"tcp://user:p%zzss@host:1883":       "tcp://user:xxxxx@host:1883", // does not parse
		"tcp://user:pass@with@at@host:1883": "tcp://user:xxxxx@host:1883",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// The spool's folder and files are gnld's user's only, even under a
// permissive umask.
func TestSpoolPermissions(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "a", "spool")
	s, err := openSpool(dir, 3, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.push(Message{Topic: "t", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"+spoolExt))
	if len(files) != 1 {
		t.Fatalf("%d spool files", len(files))
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, files[0]: 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, st.Mode(), err, want)
		}
	}
}
