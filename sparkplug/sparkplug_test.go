package sparkplug

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/encoding/protowire"

	"gnld/internal/testbroker"
	"gnld/publish"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// goldenPayload is a small birth payload; goldenHex is its encoding.
func goldenPayload() *Payload {
	return &Payload{Timestamp: 1700000000000, Seq: 7, HasSeq: true, Metrics: []Metric{
		{Name: "bdSeq", Type: Int64, Long: 3, Timestamp: 1700000000001},
		{Name: "score", Type: Double, Double: 0.123, Timestamp: 1700000000002},
		{Name: "anomalous", Type: Boolean, Bool: false, Timestamp: 1700000000003},
		{Name: "verdict", Type: String, String: "normal", Timestamp: 1700000000004},
		{Name: "sequence", Type: UInt64, Long: 300, Timestamp: 1700000000005},
		{Name: "drift", Type: String, Null: true, Timestamp: 1700000000006},
	}}
}

// goldenHex was checked with pysparkplug 0.6.1 (protobuf 6.33, the build
// root's /opt/spb-venv): DBirth.decode reads it back as goldenPayload, and
// pysparkplug's own DBirth(...).encode() of the same metrics gives these
// very bytes.
const goldenHex = "0880d095ffbc3112120a0562645365711881d095ffbc312004580312190a0573636f72651882d095ffbc31200a69b0726891ed7cbf3f" +
	"12160a09616e6f6d616c6f75731883d095ffbc31200b7000121a0a07766572646963741884d095ffbc31200c7a066e6f726d616c" +
	"12160a0873657175656e63651885d095ffbc31200858ac0212120a0564726966741886d095ffbc31200c38011807"

func TestGoldenBytes(t *testing.T) {
	b, err := goldenPayload().Marshal(true)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != goldenHex {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, goldenHex)
	}
}

// A payload of every type gnld encodes reads back the same, with the
// datatype fields only when asked for (births) and no seq when HasSeq is
// false (NDEATH).
func TestRoundTrip(t *testing.T) {
	in := &Payload{Timestamp: 1, Seq: 255, HasSeq: true, Metrics: []Metric{
		{Name: "i64", Type: Int64, Long: uint64(1<<64 - 5), Timestamp: 2}, // -5
		{Name: "u64", Type: UInt64, Long: math.MaxUint64, Timestamp: 3},
		{Name: "u32", Type: UInt32, Long: math.MaxUint32, Timestamp: 4},
		{Name: "f", Type: Float, Double: 0.5, Timestamp: 5},
		{Name: "d", Type: Double, Double: -1.25e-7, Timestamp: 6},
		{Name: "b", Type: Boolean, Bool: true, Timestamp: 7},
		{Name: "s", Type: String, String: "gnl/ü", Timestamp: 8},
		{Name: "null", Type: Double, Null: true, Timestamp: 9},
	}}
	wantField := []protowire.Number{fMetricLong, fMetricLong, fMetricInt, fMetricFloat, fMetricDouble, fMetricBool, fMetricString, 0}
	for _, types := range []bool{true, false} {
		b, err := in.Marshal(types)
		if err != nil {
			t.Fatal(err)
		}
		out, err := Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if out.Timestamp != 1 || !out.HasSeq || out.Seq != 255 || len(out.Metrics) != len(in.Metrics) {
			t.Fatalf("payload %+v", out)
		}
		for i, m := range out.Metrics {
			w := in.Metrics[i]
			wantType := w.Type
			if !types {
				wantType = Unknown
			}
			if m.Name != w.Name || m.Timestamp != w.Timestamp || m.Type != wantType || m.Null != w.Null ||
				m.Long != w.Long || m.Double != w.Double || m.Bool != w.Bool || m.String != w.String || m.ValueField != wantField[i] {
				t.Errorf("types %v metric %d: got %+v, want %+v", types, i, m, w)
			}
		}
	}
	b, _ := ndeath(9).Marshal(true)
	p, err := Unmarshal(b)
	if err != nil || p.HasSeq || len(p.Metrics) != 1 || p.Metrics[0].Name != "bdSeq" || p.Metrics[0].Type != Int64 || p.Metrics[0].Long != 9 {
		t.Errorf("NDEATH %+v %v: want bdSeq 9 (Int64) only, no seq", p, err)
	}
	if _, err := Unmarshal([]byte{0x12, 0x05, 0x0a}); err == nil {
		t.Error("truncated payload: no error")
	}
	if _, err := (&Payload{Metrics: []Metric{{Name: "x", Type: DataType(99)}}}).Marshal(true); err == nil {
		t.Error("unknown data type: no error")
	}
}

// NCMD payloads made by pysparkplug 0.6.1: NCmd(timestamp=1700000000000,
// metrics=(Metric(name="Node Control/Rebirth", datatype=BOOLEAN,
// value=True),)).encode(), without and with include_dtypes.
func TestNCMDFromPysparkplug(t *testing.T) {
	for _, h := range []string{
		"0880d095ffbc3112180a144e6f646520436f6e74726f6c2f526562697274687001",
		"0880d095ffbc31121a0a144e6f646520436f6e74726f6c2f52656269727468200b7001",
	} {
		b, _ := hex.DecodeString(h)
		p, err := Unmarshal(b)
		if err != nil || p.HasSeq || len(p.Metrics) != 1 {
			t.Fatalf("%s: %+v %v", h, p, err)
		}
		if m := p.Metrics[0]; m.Name != RebirthMetric || m.ValueField != fMetricBool || !m.Bool {
			t.Errorf("%s: metric %+v, want Node Control/Rebirth = true", h, m)
		}
	}
}

func TestDeviceMetrics(t *testing.T) {
	at := time.UnixMilli(1700000000123).UTC()
	r := publish.Result{Timestamp: at, Sequence: 42, Camera: "cam", Model: publish.Model{Version: "v3"},
		Score: 0.123, Threshold: 2.5, Verdict: "anomalous", Drift: "warning",
		LatencyMS: publish.Latency{Total: 12.5, Invoke: 7.25}}
	ms := deviceMetrics(&r, 0)
	got := map[string]Metric{}
	for i, m := range ms {
		if m.Name != DeviceMetrics[i].Name || m.Type != DeviceMetrics[i].Type || m.Timestamp != 1700000000123 {
			t.Errorf("metric %d: %+v", i, m)
		}
		got[m.Name] = m
	}
	if got["score"].Double != 0.123 || got["threshold"].Double != 2.5 || got["verdict"].String != "anomalous" ||
		!got["anomalous"].Bool || got["drift"].String != "warning" || !got["part_id"].Null ||
		got["model_version"].String != "v3" || got["sequence"].Long != 42 ||
		got["latency_total_ms"].Double != 12.5 || got["latency_invoke_ms"].Double != 7.25 {
		t.Errorf("values %+v", got)
	}
	// Not scored: no score, threshold nor anomalous to report.
	u := publish.Result{Timestamp: at, Sequence: 43, Camera: "cam", Verdict: publish.NotScored, PartID: "p1"}
	for _, m := range deviceMetrics(&u, 0) {
		wantNull := map[string]bool{"score": true, "threshold": true, "anomalous": true, "drift": true, "model_version": true}[m.Name]
		if m.Null != wantNull {
			t.Errorf("not scored: %s null %v, want %v", m.Name, m.Null, wantNull)
		}
	}
	for _, m := range deviceMetrics(nil, 5) {
		if !m.Null || m.Timestamp != 5 {
			t.Errorf("before the first result: %+v, want null", m)
		}
	}
	if shortest(0.1) != 0.1 || shortest(float32(math.Inf(1))) != math.Inf(1) {
		t.Error("shortest")
	}
}

// bdSeq starts at 0, goes up by one per CONNECT, wraps after 255 and
// survives a restart (a new Node on the same folder).
func TestBdSeqKept(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Broker: "tcp://127.0.0.1:1", ClientID: "x", Group: "g", Node: "n", Timeout: time.Second, ReconnectMax: time.Second, StateDir: dir}
	n, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := n.takeBdSeq(), n.takeBdSeq(); a != 0 || b != 1 {
		t.Fatalf("bdSeq %d, %d: want 0, 1", a, b)
	}
	n, _ = New(cfg, testLogger(t))
	if v := n.takeBdSeq(); v != 2 {
		t.Fatalf("after a restart bdSeq %d, want 2", v)
	}
	os.WriteFile(filepath.Join(dir, BdSeqFile), []byte("255\n"), 0o600)
	n, _ = New(cfg, testLogger(t))
	if a, b := n.takeBdSeq(), n.takeBdSeq(); a != 255 || b != 0 {
		t.Fatalf("bdSeq %d, %d: want 255, 0", a, b)
	}
	os.WriteFile(filepath.Join(dir, BdSeqFile), []byte("junk"), 0o600)
	n, _ = New(cfg, testLogger(t))
	if v := n.takeBdSeq(); v != 0 {
		t.Fatalf("unreadable file: bdSeq %d, want 0", v)
	}
	for _, bad := range []Config{{Broker: "nope"}, {Broker: cfg.Broker, Group: "a/b", Node: "n"}, {Broker: cfg.Broker, Group: "g", Node: "n", Devices: []string{"#"}}} {
		bad.Timeout, bad.ReconnectMax, bad.StateDir = time.Second, time.Second, dir
		if _, err := New(bad, testLogger(t)); err == nil {
			t.Errorf("config %+v: no error", bad)
		}
	}
}

// proxy forwards TCP connections to a broker; cut closes them without an
// MQTT DISCONNECT, as a network fault would, so that the broker sends the
// client's Will.
type proxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startProxy(t *testing.T, to string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { io.Copy(b, c); b.Close() }()
			go func() { io.Copy(c, b); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) url() string { return "tcp://" + p.l.Addr().String() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// pub publishes payload on topic (QoS 1) from a client of its own.
func pub(t *testing.T, b *testbroker.Broker, topic string, payload []byte) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(fmt.Sprintf("testpub-%d", time.Now().UnixNano())))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// spMsg is one Sparkplug message the test's subscriber received.
type spMsg struct {
	kind, device string
	p            Payload
}

func decodeAll(t *testing.T, msgs []testbroker.Msg) []spMsg {
	t.Helper()
	var out []spMsg
	for _, m := range msgs {
		parts := strings.Split(m.Topic, "/")
		p, err := Unmarshal(m.Payload)
		if err != nil {
			t.Fatalf("%s: %v", m.Topic, err)
		}
		if parts[2] == "NCMD" { // the test's own
			continue
		}
		s := spMsg{kind: parts[2], p: p}
		if len(parts) > 4 {
			s.device = parts[4]
		}
		out = append(out, s)
	}
	return out
}

func metricOf(p Payload, name string) (Metric, bool) {
	for _, m := range p.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

// One edge node against a real broker: births, 300 DDATA with seq
// continuity across the wrap, a rebirth request, the Will when the
// connection is cut, births with the next bdSeq after the reconnect, and
// the NDEATH of a clean stop.
func TestNodeWithBroker(t *testing.T) {
	b := testbroker.Start(t)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", b.Port))
	sub := testbroker.Subscribe(t, b, Namespace+"/#")
	dir := t.TempDir()
	n, err := New(Config{Broker: px.url(), ClientID: "gnld-dev-spb", Group: "site", Node: "dev", Devices: []string{"cam1", "cam2"},
		Properties: []Property{{"Software", "gnld"}}, Timeout: 2 * time.Second, ReconnectMax: 500 * time.Millisecond, StateDir: dir, Queue: 1024}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	n.Start()
	if !n.Stats().Connected {
		t.Fatal("not connected after Start")
	}
	const total = 300
	for i := range total {
		r := publish.Result{Timestamp: time.Now(), Sequence: uint64(i + 1), Camera: "cam1", Verdict: "normal", Score: float32(i) / 10}
		for {
			before := n.Stats().Dropped
			n.Result(r)
			if n.Stats().Dropped == before {
				break
			}
			time.Sleep(time.Millisecond) // the queue is full: keep every result for this check
		}
	}
	count := func(kind string) func([]testbroker.Msg) bool {
		return func(ms []testbroker.Msg) bool {
			c := 0
			for _, m := range ms {
				if strings.Contains(m.Topic, "/"+kind+"/") {
					c++
				}
			}
			return kind == "DDATA" && c >= total || kind != "DDATA" && c >= 2
		}
	}
	sub.WaitFor(t, 20*time.Second, "300 DDATA", count("DDATA"))

	got := decodeAll(t, sub.Messages())
	if got[0].kind != "NBIRTH" || got[1].kind != "DBIRTH" || got[1].device != "cam1" || got[2].kind != "DBIRTH" || got[2].device != "cam2" {
		t.Fatalf("first messages %s %s %s, want NBIRTH, DBIRTH cam1, DBIRTH cam2", got[0].kind, got[1].kind, got[2].kind)
	}
	if bd, ok := metricOf(got[0].p, "bdSeq"); !ok || bd.Long != 0 || bd.Type != Int64 || got[0].p.Seq != 0 {
		t.Errorf("NBIRTH: bdSeq %+v seq %d, want bdSeq 0 (Int64), seq 0", bd, got[0].p.Seq)
	}
	if rb, ok := metricOf(got[0].p, RebirthMetric); !ok || rb.Type != Boolean || rb.Bool || rb.ValueField != fMetricBool {
		t.Errorf("NBIRTH %s: %+v, want Boolean false", RebirthMetric, rb)
	}
	for _, d := range DeviceMetrics {
		if m, ok := metricOf(got[1].p, d.Name); !ok || m.Type != d.Type || !m.Null {
			t.Errorf("DBIRTH %s: %+v, want type %d, null", d.Name, m, d.Type)
		}
	}
	for i, m := range got {
		if uint64(i)%256 != m.p.Seq {
			t.Fatalf("message %d (%s) has seq %d, want %d", i, m.kind, m.p.Seq, i%256)
		}
		if i >= 3 {
			seq, _ := metricOf(m.p, "sequence")
			score, _ := metricOf(m.p, "score")
			if m.kind != "DDATA" || m.device != "cam1" || seq.Long != uint64(i-2) || score.Double != shortest(float32(i-3)/10) || score.Type != Unknown {
				t.Fatalf("message %d: %s %s sequence %d score %+v", i, m.kind, m.device, seq.Long, score)
			}
		}
	}

	// Rebirth: NBIRTH with seq 0 and the same bdSeq, DBIRTHs with the
	// last values.
	mark := len(sub.Messages())
	ncmd, _ := (&Payload{Timestamp: nowMS(), Metrics: []Metric{{Name: RebirthMetric, Type: Boolean, Bool: true}}}).Marshal(false)
	pub(t, b, "spBv1.0/site/NCMD/dev", ncmd)
	sub.WaitFor(t, 10*time.Second, "births after the rebirth request", func(ms []testbroker.Msg) bool { return len(ms) >= mark+4 })
	re := decodeAll(t, sub.Messages()[mark:])
	if re[0].kind != "NBIRTH" || re[0].p.Seq != 0 || re[1].kind != "DBIRTH" || re[1].p.Seq != 1 || re[2].p.Seq != 2 {
		t.Fatalf("after rebirth: %s seq %d, %s seq %d", re[0].kind, re[0].p.Seq, re[1].kind, re[1].p.Seq)
	}
	if bd, _ := metricOf(re[0].p, "bdSeq"); bd.Long != 0 {
		t.Errorf("rebirth bdSeq %d, want 0 (same session)", bd.Long)
	}
	if seq, _ := metricOf(re[1].p, "sequence"); seq.Null || seq.Long != total {
		t.Errorf("DBIRTH cam1 after rebirth: sequence %+v, want the last value %d", seq, total)
	}

	// A cut connection: the broker sends the Will (NDEATH, bdSeq 0), gnld
	// reconnects with bdSeq 1.
	mark = len(sub.Messages())
	px.cut()
	sub.WaitFor(t, 15*time.Second, "NDEATH and new births", func(ms []testbroker.Msg) bool {
		var death, births bool
		dbirths := 0
		for _, m := range decodeAll(t, ms[mark:]) {
			death = death || m.kind == "NDEATH"
			births = births || m.kind == "NBIRTH"
			if m.kind == "DBIRTH" {
				dbirths++
			}
		}
		return death && births && dbirths == 2
	})
	for _, m := range decodeAll(t, sub.Messages()[mark:]) {
		bd, _ := metricOf(m.p, "bdSeq")
		switch m.kind {
		case "NDEATH":
			if m.p.HasSeq || bd.Long != 0 || bd.Type != Int64 || len(m.p.Metrics) != 1 {
				t.Errorf("Will NDEATH %+v: want bdSeq 0 only, no seq", m.p)
			}
		case "NBIRTH":
			if bd.Long != 1 || m.p.Seq != 0 {
				t.Errorf("NBIRTH after reconnect: bdSeq %d seq %d, want 1, 0", bd.Long, m.p.Seq)
			}
		}
	}

	// A clean stop publishes the NDEATH of the session itself.
	mark = len(sub.Messages())
	n.Stop(time.Now().Add(2 * time.Second))
	sub.WaitFor(t, 10*time.Second, "NDEATH at stop", func(ms []testbroker.Msg) bool { return len(decodeAll(t, ms[mark:])) > 0 })
	last := decodeAll(t, sub.Messages()[mark:])
	if bd, _ := metricOf(last[0].p, "bdSeq"); len(last) != 1 || last[0].kind != "NDEATH" || bd.Long != 1 || last[0].p.HasSeq {
		t.Errorf("at stop: %d messages, %s bdSeq %d, want NDEATH bdSeq 1 only", len(last), last[0].kind, bd.Long)
	}
	st := n.Stats()
	if st.Sent != total || st.Births != 3 || st.Rebirths != 1 || st.Connects != 2 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, BdSeqFile)); !bytes.Equal(b, []byte("2\n")) {
		t.Errorf("bdSeq file %q, want 2", b)
	}
}
