// Package testbroker runs a real Mosquitto on a free loopback port for
// tests, and a subscriber that records what arrives.
//
// The broker keeps its state in a file (persistence on) and Stop ends it
// with SIGTERM, so a subscriber's persistent session and the QoS 1
// messages queued for it survive Restart, as they would on a production
// broker. Tests that need it skip when mosquitto is not installed, and
// with -short.
package testbroker

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Broker is one Mosquitto process. Its methods are for the test goroutine.
type Broker struct {
	t      testing.TB
	Port   int
	scheme string // tcp or ssl
	dir    string
	// user and password the Subscriber logs in with (StartAuth).
	user, password string
	cmd            *exec.Cmd
	done           chan struct{}
}

// Start runs mosquitto on a free port of 127.0.0.1 and stops it when the
// test ends.
func Start(t testing.TB) *Broker {
	t.Helper()
	return start(t, "tcp", "")
}

// TLSFiles are the PEM files of a TLS broker's CA and of a client
// certificate it accepts.
type TLSFiles struct{ CA, Cert, Key string }

// StartTLS runs mosquitto with a TLS listener that requires a client
// certificate signed by a CA made for this test.
func StartTLS(t testing.TB) (*Broker, TLSFiles) {
	t.Helper()
	dir := t.TempDir()
	files := writePKI(t, dir)
	conf := fmt.Sprintf("cafile %s\ncertfile %s/server.pem\nkeyfile %s/server.key\nrequire_certificate true\n", files.CA, dir, dir)
	return start(t, "ssl", conf), files
}

// StartAuth runs mosquitto that accepts only user with password (a
// password_file made by mosquitto_passwd) and refuses anonymous clients.
// Subscribe logs in as user.
func StartAuth(t testing.TB, user, password string) *Broker {
	t.Helper()
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed")
	}
	file := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command(bin, "-c", "-b", file, user, password).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v %s", err, out)
	}
	b := start(t, "tcp", "password_file "+file+"\nallow_anonymous false\n")
	b.user, b.password = user, password
	return b
}

// StartConf runs mosquitto like Start with extra lines appended to its
// configuration: a bridge section, queue limits.
func StartConf(t testing.TB, extra string) *Broker {
	t.Helper()
	b := start(t, "tcp", "")
	b.Stop()
	conf := filepath.Join(b.dir, "mosquitto.conf")
	base, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, append(base, []byte("\n"+extra+"\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Restart()
	return b
}

func start(t testing.TB, scheme, listenerConf string) *Broker {
	if testing.Short() {
		t.Skip("integration test with a real broker; skipped with -short")
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto not installed")
		}
	}
	b := &Broker{t: t, Port: FreePort(t), scheme: scheme, dir: t.TempDir()}
	// user root: as root, mosquitto would otherwise switch to a user that
	// cannot write the test's temporary folder.
	if !strings.Contains(listenerConf, "allow_anonymous") {
		listenerConf += "allow_anonymous true\n"
	}
	conf := fmt.Sprintf("user root\nlistener %d 127.0.0.1\n%spersistence true\npersistence_location %s/\nlog_dest none\n", b.Port, listenerConf, b.dir)
	if err := os.WriteFile(filepath.Join(b.dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(bin, "-c", filepath.Join(b.dir, "mosquitto.conf"))
	b.start()
	t.Cleanup(b.Stop)
	return b
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// URL is the broker's address for paho.
func (b *Broker) URL() string { return fmt.Sprintf("%s://127.0.0.1:%d", b.scheme, b.Port) }

func (b *Broker) start() {
	b.t.Helper()
	cmd := exec.Command(b.cmd.Path, b.cmd.Args[1:]...)
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(b.done)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.Port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("mosquitto did not listen on %d: %v", b.Port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the broker (SIGTERM: it saves its state) and waits for it.
// Stopping a stopped broker does nothing.
func (b *Broker) Stop() {
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		b.cmd.Process.Kill()
		<-b.done
	}
}

// Restart starts a stopped broker again on the same port.
func (b *Broker) Restart() { b.start() }

// Msg is one message a Subscriber received.
type Msg struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Subscriber records every message on a topic filter. It uses a
// persistent session at QoS 1, so messages published while it is
// reconnecting (after a broker restart) still reach it.
type Subscriber struct {
	mu   sync.Mutex
	msgs []Msg
	c    mqtt.Client
}

// Subscribe connects a subscriber to b for filter and waits for the
// subscription; it disconnects when the test ends.
func Subscribe(t testing.TB, b *Broker, filter string) *Subscriber {
	t.Helper()
	s := &Subscriber{}
	id := fmt.Sprintf("testsub-%d-%d", b.Port, time.Now().UnixNano())
	opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(id).
		SetUsername(b.user).SetPassword(b.password).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			s.mu.Lock()
			s.msgs = append(s.msgs, Msg{m.Topic(), slices.Clone(m.Payload()), m.Retained()})
			s.mu.Unlock()
		})
	s.c = mqtt.NewClient(opts)
	if tok := s.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	if tok := s.c.Subscribe(filter, 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { s.c.Disconnect(100) })
	return s
}

// Messages returns a copy of what has arrived, in arrival order.
func (s *Subscriber) Messages() []Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// On returns the messages whose topic ends with suffix.
func (s *Subscriber) On(suffix string) []Msg {
	var out []Msg
	for _, m := range s.Messages() {
		if strings.HasSuffix(m.Topic, suffix) {
			out = append(out, m)
		}
	}
	return out
}

// WaitFor polls until ok holds for the messages so far, or fails the test
// after timeout.
func (s *Subscriber) WaitFor(t testing.TB, timeout time.Duration, what string, ok func([]Msg) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok(s.Messages()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (%d messages)", timeout, what, len(s.Messages()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
