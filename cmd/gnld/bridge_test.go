package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"gnld/internal/testbroker"
	"gnld/publish"
)

// cutProxy forwards TCP connections to target until cut, which closes the
// listener and every open connection (the link to the centre goes down);
// restore listens again on the same port.
type cutProxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	p := &cutProxy{t: t, addr: fmt.Sprintf("127.0.0.1:%d", testbroker.FreePort(t)), target: target}
	p.restore()
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// consumer is a central application (historian, MES) sharing one
// subscription with others: each result goes to one of them.
type consumer struct {
	mu   sync.Mutex
	seqs map[uint64]int
}

// clientTLS is the TLS configuration of a client of a StartTLS broker.
func clientTLS(t *testing.T, files testbroker.TLSFiles) *tls.Config {
	ca, _ := os.ReadFile(files.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

func startConsumer(t *testing.T, b *testbroker.Broker, files testbroker.TLSFiles, name, filter string) *consumer {
	c := &consumer{seqs: map[uint64]int{}}
	opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(name).SetTLSConfig(clientTLS(t, files)).
		SetCleanSession(false).SetAutoReconnect(true).SetOrderMatters(false)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s connect: %v", name, tok.Error())
	}
	tok := cl.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		var r publish.Result
		if json.Unmarshal(m.Payload(), &r) == nil {
			c.mu.Lock()
			c.seqs[r.Sequence]++
			c.mu.Unlock()
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s subscribe: %v", name, tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return c
}

func (c *consumer) got() map[uint64]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[uint64]int, len(c.seqs))
	for k, v := range c.seqs {
		out[k] = v
	}
	return out
}

// siteBridgeConf is the shipped site bridge
// (systemd/mosquitto-site-bridge.conf) for site, its link to the centre
// going through link, with the test's certificates and a shorter retry.
func siteBridgeConf(t *testing.T, site string, link *cutProxy, files testbroker.TLSFiles) string {
	shipped, err := os.ReadFile("../../systemd/mosquitto-site-bridge.conf")
	if err != nil {
		t.Fatal(err)
	}
	var conf []string
	for _, line := range strings.Split(string(shipped), "\n") {
		if strings.HasPrefix(line, "persistence ") { // the test broker's own configuration has it
			continue
		}
		line = strings.ReplaceAll(line, "CENTRE_HOST:8883", link.addr)
		line = strings.ReplaceAll(line, "SITE", site)
		line = strings.ReplaceAll(line, "/etc/mosquitto/certs/centre-ca.pem", files.CA)
		line = strings.ReplaceAll(line, "/etc/mosquitto/certs/site.pem", files.Cert)
		line = strings.ReplaceAll(line, "/etc/mosquitto/certs/site.key", files.Key)
		line = strings.ReplaceAll(line, "restart_timeout 2 30", "restart_timeout 1 5") // the test's patience
		conf = append(conf, line)
	}
	return strings.Join(conf, "\n")
}

// The shipped site bridge (systemd/mosquitto-site-bridge.conf) between two
// real mosquittos, the centre over TLS with client certificates: gnld
// publishes to the site broker while two central consumers share one
// subscription ($share/historian/...). The link to the centre is cut for
// a while (GNLD_TEST_BRIDGE_CUT, default 30s) as results flow, then
// restored. Every result gnld published reaches the centre: 0 lost, and
// none is delivered to both consumers.
func TestSiteBridge(t *testing.T) {
	cut := 30 * time.Second
	if v := os.Getenv("GNLD_TEST_BRIDGE_CUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		cut = d
	}
	dir, _ := mtdSamples(t, 2, "good")
	centre, files := testbroker.StartTLS(t)
	link := newCutProxy(t, fmt.Sprintf("127.0.0.1:%d", centre.Port))
	site := testbroker.StartConf(t, siteBridgeConf(t, "test", link, files))
	historian := []*consumer{
		startConsumer(t, centre, files, "historian-1", "$share/historian/gnl/test/+/result"),
		startConsumer(t, centre, files, "historian-2", "$share/historian/gnl/test/+/result"),
	}
	local := testbroker.Subscribe(t, site, "gnl/test/+/result") // what gnld published
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, wait := startGnld(t, ctx, baseEnv(t, site.URL(), map[string]string{
		"GNLD_CAMERAS": "line=dir:" + dir, "GNLD_CAMERA_LINE_LOOP": "true", "GNLD_CAMERA_LINE_FPS": "20",
		"GNLD_LOG_LEVEL": "warn", "GNLD_CALIBRATION_DIR": t.TempDir(),
	}))
	atCentre := func() int {
		n := 0
		for _, h := range historian {
			n += len(h.got())
		}
		return n
	}
	local.WaitFor(t, 30*time.Second, "results at the centre before the cut", func([]testbroker.Msg) bool { return atCentre() >= 20 })
	link.cut()
	before := len(local.Messages())
	time.Sleep(cut)
	during := len(local.Messages()) - before
	link.restore()
	time.Sleep(2 * time.Second)
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	published := results(t, local, "line")
	local.WaitFor(t, 60*time.Second, "every result at the centre after the link is back", func([]testbroker.Msg) bool {
		return atCentre() >= len(published)
	})
	seen := map[uint64]int{}
	perConsumer := []int{}
	for _, h := range historian {
		got := h.got()
		perConsumer = append(perConsumer, len(got))
		for seq, n := range got {
			seen[seq] += n
		}
	}
	lost, twice := 0, 0
	for _, r := range published {
		switch seen[r.Sequence] {
		case 0:
			lost++
		case 1:
		default:
			twice++
		}
	}
	t.Logf("link cut for %s while gnld published %d results; %d results in all, at the centre: %v per consumer, %d lost, %d delivered more than once",
		cut, during, len(published), perConsumer, lost, twice)
	if lost > 0 || twice > 0 || during == 0 || perConsumer[0] == 0 || perConsumer[1] == 0 {
		t.Errorf("%d lost, %d delivered more than once, %d published during the cut, per consumer %v; want 0, 0, some, both sharing",
			lost, twice, during, perConsumer)
	}
}

// The shipped centre configuration (systemd/mosquitto-centre.conf) keeps
// the share of a consumer that is away: two consumers share one
// subscription with persistent sessions, one goes away while 3,000
// results arrive, and comes back. Every result reaches one of them, none
// both. (With mosquitto's default queue of 1,000, 500 are lost.)
func TestCentreQueuesForAwayConsumer(t *testing.T) {
	shipped, err := os.ReadFile("../../systemd/mosquitto-centre.conf")
	if err != nil {
		t.Fatal(err)
	}
	var queue []string // the queue settings; listener and TLS are the test broker's own
	for _, line := range strings.Split(string(shipped), "\n") {
		if strings.HasPrefix(line, "max_queued_") {
			queue = append(queue, line)
		}
	}
	if len(queue) != 2 {
		t.Fatalf("mosquitto-centre.conf: want max_queued_messages and max_queued_bytes, got %q", queue)
	}
	centre := testbroker.StartConf(t, strings.Join(queue, "\n"))
	var mu sync.Mutex
	got := map[string]map[string]int{"historian-1": {}, "historian-2": {}}
	join := func(name string) mqtt.Client {
		cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(centre.URL()).SetClientID(name).
			SetCleanSession(false).SetOrderMatters(false))
		if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("%s connect: %v", name, tok.Error())
		}
		tok := cl.Subscribe("$share/historian/gnl/+/+/result", 1, func(_ mqtt.Client, m mqtt.Message) {
			mu.Lock()
			got[name][string(m.Payload())]++
			mu.Unlock()
		})
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("%s subscribe: %v", name, tok.Error())
		}
		return cl
	}
	h1, h2 := join("historian-1"), join("historian-2")
	defer h1.Disconnect(100)
	h2.Disconnect(100) // away: its persistent session stays in the group

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(centre.URL()).SetClientID("bridge-site1"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	const n = 3000
	for i := range n {
		if tok := pub.Publish("gnl/site1/line1/result", 1, false, fmt.Sprint(i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	h2 = join("historian-2") // back: what was queued for it arrives
	defer h2.Disconnect(100)
	counts := func() (union, both, h2n int) {
		mu.Lock()
		defer mu.Unlock()
		for i := range n {
			a, b := got["historian-1"][fmt.Sprint(i)], got["historian-2"][fmt.Sprint(i)]
			if a+b > 0 {
				union++
			}
			if a > 0 && b > 0 {
				both++
			}
		}
		return union, both, len(got["historian-2"])
	}
	deadline := time.Now().Add(20 * time.Second)
	for u, _, _ := counts(); u < n && time.Now().Before(deadline); u, _, _ = counts() {
		time.Sleep(100 * time.Millisecond)
	}
	union, both, away := counts()
	t.Logf("%d of %d results reached a consumer, %d of them the one that was away, %d both", union, n, away, both)
	if union != n || both != 0 || away == 0 {
		t.Errorf("%d of %d results reached a consumer (%d the one that was away), %d both; want all, none both", union, n, away, both)
	}
}
