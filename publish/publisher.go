// Package publish sends gnld's results to an MQTT broker (paho), keeping
// them in an on-disk spool while the broker cannot be reached.
//
// Topics (Frigate's tree, one prefix):
//
//	gnl/<site>/<camera>/result   JSON Result, QoS from the config, spooled
//	gnl/<site>/<camera>/map      anomaly map bytes (PNG or raw 8-bit), best effort, not retained
//	gnl/<site>/<device>/status   retained "online" / "offline"; "offline" is also the Last Will
//	gnl/<site>/<device>/stats    JSON counters on a timer, best effort
//	gnl/<site>/<camera>/trigger  subscribed (Subscribe): a PLC asks for a part to be inspected
//
// Lifecycle: New checks the config and opens the spool. Connect starts the
// connection in the background (a broker that is down at start-up is
// retried, like one lost later). Subscribe, if used, comes before Connect. Run is the sender: call it once, in its
// own goroutine; it returns after Close, once everything queued before
// Close is published, or spooled and the hard deadline given to Run has
// passed, and "offline" is sent. Result and Map may
// be called from any goroutine between Connect and Close; Close is called
// once, after the last Result. Stats is safe at any time.
//
// Delivery: at least once, per camera in order. A result goes straight to
// the broker only when the spool is empty and the connection up; it is
// spooled when the broker is down or does not acknowledge it within
// Config.Timeout, and every later result goes behind it until the spool is
// replayed. A result can thus arrive twice (run_id, camera and sequence
// identify it); none is lost unless the spool overflows, which drops the
// oldest, counts and logs it.
package publish

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Config configures a Publisher.
type Config struct {
	Broker   string // tcp://, ssl://, tls://, mqtts://, ws:// or wss:// URL
	ClientID string // unique per device
	Username string
	Password string
	CAFile   string // PEM; empty: the system's roots
	CertFile string // client certificate (PEM), with KeyFile
	KeyFile  string
	QoS      byte

	Site   string
	Device string

	Timeout      time.Duration // limit for connecting and for each acknowledgement
	ReconnectMax time.Duration // cap of the reconnect backoff
	SpoolDir     string
	SpoolMax     int // messages

	StatsInterval time.Duration // 0: no stats topic
	// StatsExtra, when set, adds its value under "cameras" to each stats
	// message. It is called from Run's goroutine and must be goroutine-safe.
	StatsExtra func() any
	// StatsModel, when set, adds its value under "model", like StatsExtra.
	StatsModel func() any
}

// Stats are the publisher's counters since start.
type Stats struct {
	Published    uint64 `json:"published"`     // results acknowledged by the broker (QoS>0) or sent (QoS 0)
	Spooled      uint64 `json:"spooled"`       // results written to the spool
	Replayed     uint64 `json:"replayed"`      // spooled results published later
	SpoolLen     int    `json:"spool_len"`     // results waiting in the spool now
	SpoolDropped uint64 `json:"spool_dropped"` // results dropped: spool full (oldest first) or not writable
	// SpoolWriteFailed: of SpoolDropped, results lost because the spool
	// could not be written (disk full, read-only) while the broker was away.
	SpoolWriteFailed uint64 `json:"spool_write_failed"`
	MapsSkipped      uint64 `json:"maps_skipped"` // maps not sent because the broker was away
	// Unacked: publishes the broker did not acknowledge within
	// Config.Timeout (the result went to the spool).
	Unacked     uint64 `json:"unacked"`
	Disconnects uint64 `json:"disconnects"` // connections lost, or dropped by gnld (see maxUnacked)
	Connected   bool   `json:"connected"`
}

// queued is one message for the sender; maps and stats are best effort.
type queued struct {
	Message
	bestEffort bool
}

// Publisher sends messages; see the package comment for its lifecycle.
type Publisher struct {
	cfg    Config
	log    *slog.Logger
	broker string // cfg.Broker without its password, for logs
	client mqtt.Client
	spool  *spool
	queue  chan queued
	kick   chan struct{} // asks Run to replay the spool (after a connect)
	start  time.Time

	statsNow chan struct{} // asks Run for a stats message now (StatsNow)

	published, spooled, replayed, mapsSkipped, disconnects atomic.Uint64
	unacked, writeFailed                                   atomic.Uint64

	// Used only by Run's goroutine.
	unackedRow  int       // publishes in a row not acknowledged in time
	replayHold  time.Time // no replay before: the last publish was not acknowledged
	spoolBroken bool      // the last spool write failed
	brokenSince uint64    // writeFailed when it began
	brokenLog   time.Time // the last log line about it

	mu          sync.Mutex // guards the outage bookkeeping below (paho's goroutines)
	downSince   time.Time  // when the connection was lost
	spooledDown uint64     // spooled count then
	lastRefusal string     // the last connect failure logged; "" once connected

	subs map[string]Handler // topic -> handler; fixed once Connect is called
}

// Handler receives a subscribed message: its payload, whether the broker
// marked it retained, and when it arrived. Handlers are called one at a
// time, in arrival order, from paho's goroutine: they must not block.
type Handler func(payload []byte, retained bool, at time.Time)

// New checks cfg, opens the spool and prepares the MQTT client. It does
// not connect.
func New(cfg Config, log *slog.Logger) (*Publisher, error) {
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("mqtt broker %q: expected a URL such as tcp://host:1883", RedactURL(cfg.Broker))
	}
	if cfg.QoS > 2 {
		return nil, fmt.Errorf("mqtt qos %d: expected 0, 1 or 2", cfg.QoS)
	}
	if cfg.Timeout <= 0 || cfg.ReconnectMax <= 0 || cfg.SpoolMax < 1 {
		return nil, errors.New("mqtt timeout, reconnect max and spool max must be positive")
	}
	tlsCfg, err := tlsConfig(u.Scheme, cfg)
	if err != nil {
		return nil, err
	}
	sp, err := openSpool(cfg.SpoolDir, cfg.SpoolMax, log)
	if err != nil {
		return nil, err
	}
	if n := sp.len(); n > 0 {
		log.Info("spool: results from an earlier run will be published", "dir", cfg.SpoolDir, "count", n)
	}
	p := &Publisher{
		cfg: cfg, log: log, broker: u.Redacted(), spool: sp, statsNow: make(chan struct{}, 1),
		queue: make(chan queued, 64),
		kick:  make(chan struct{}, 1),
		start: time.Now(),
	}
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetTLSConfig(tlsCfg).
		SetCleanSession(true).
		SetStore(noStore{}).
		// Subscribed messages (PLC triggers) reach their handler in order,
		// one at a time; handlers never block.
		SetOrderMatters(true).
		SetConnectTimeout(cfg.Timeout).
		SetWriteTimeout(cfg.Timeout).
		SetKeepAlive(30*time.Second).
		SetPingTimeout(cfg.Timeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(cfg.ReconnectMax).
		// paho's auto-reconnect only covers a connection that once
		// succeeded; ConnectRetry covers a broker down at start-up.
		SetConnectRetry(true).
		SetConnectRetryInterval(min(cfg.ReconnectMax, 5*time.Second)).
		SetWill(p.statusTopic(), "offline", 1, true).
		SetOnConnectHandler(p.onConnect).
		SetConnectionNotificationHandler(p.onNotification).
		SetConnectionLostHandler(p.onLost)
	p.client = mqtt.NewClient(opts)
	p.subs = map[string]Handler{}
	return p, nil
}

// Subscribe has the publisher subscribe to topic (QoS 1) on every
// connection and pass its messages to h. Call it before Connect.
func (p *Publisher) Subscribe(topic string, h Handler) { p.subs[topic] = h }

// TLSConfig is the TLS configuration a Publisher of cfg connects with
// (nil: plain TCP), for another connection to the same broker (package
// sparkplug).
func TLSConfig(cfg Config) (*tls.Config, error) {
	u, err := url.Parse(cfg.Broker)
	if err != nil {
		return nil, fmt.Errorf("mqtt broker %q: expected a URL such as tcp://host:1883", RedactURL(cfg.Broker))
	}
	return tlsConfig(u.Scheme, cfg)
}

func tlsConfig(scheme string, cfg Config) (*tls.Config, error) {
	secure := scheme == "ssl" || scheme == "tls" || scheme == "mqtts" || scheme == "wss"
	if !secure && cfg.CAFile == "" && cfg.CertFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt CA file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt CA file %s: no PEM certificate in it", cfg.CAFile)
		}
	}
	if cfg.CertFile != "" || cfg.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt client certificate %s / key %s: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// Topic returns gnl/<site>/<name>/<leaf>.
func (p *Publisher) Topic(name, leaf string) string {
	return "gnl/" + p.cfg.Site + "/" + name + "/" + leaf
}

func (p *Publisher) statusTopic() string { return p.Topic(p.cfg.Device, "status") }

// Connect starts connecting in the background and waits at most
// Config.Timeout for the first connection. A broker that cannot be reached
// is not an error: it is logged once and retried until Close, and results
// are spooled meanwhile.
func (p *Publisher) Connect() {
	tok := p.client.Connect()
	if !tok.WaitTimeout(p.cfg.Timeout) {
		p.log.Warn("mqtt: broker not reachable at start-up; retrying in the background, results go to the spool",
			"broker", p.broker, "waited", p.cfg.Timeout)
		return
	}
	if err := tok.Error(); err != nil {
		p.log.Warn("mqtt: connect failed; retrying in the background, results go to the spool", "broker", p.broker, "err", err)
	}
}

// onConnect runs in a paho goroutine after every (re)connect: it
// subscribes again, repeats the retained "online", logs the end of an
// outage, and has Run replay the spool.
func (p *Publisher) onConnect(c mqtt.Client) {
	p.subscribe(c) // first: "online" says gnld listens
	tok := c.Publish(p.statusTopic(), 1, true, "online")
	if !tok.WaitTimeout(p.cfg.Timeout) || tok.Error() != nil {
		p.log.Warn("mqtt: status online not acknowledged", "err", ackErr(tok, p.cfg.Timeout))
	}
	p.mu.Lock()
	since, spooled := p.downSince, p.spooled.Load()-p.spooledDown
	p.lastRefusal = ""
	p.mu.Unlock()
	if p.disconnects.Load() == 0 {
		p.log.Info("mqtt: connected", "broker", p.broker, "spool_len", p.spool.len())
	} else {
		p.log.Info("mqtt: connection back", "broker", p.broker,
			"outage", time.Since(since).Round(time.Millisecond), "spooled_meanwhile", spooled, "spool_len", p.spool.len())
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// onNotification runs in a paho goroutine at each connection attempt. A
// broker that answers but refuses the connection (credentials, client ID)
// is logged when the cause differs from the last one logged: once, not at
// every retry, and not hidden behind "not reachable". Network failures
// are left to Connect's and onLost's lines. The broker URL is not taken
// from the notification: paho's carries the password.
func (p *Publisher) onNotification(_ mqtt.Client, n mqtt.ConnectionNotification) {
	f, ok := n.(mqtt.ConnectionNotificationFailed)
	if !ok || f.Reason == nil || errors.Is(f.Reason, packets.ErrorNetworkError) {
		return
	}
	why := f.Reason.Error()
	p.mu.Lock()
	repeat := why == p.lastRefusal
	p.lastRefusal = why
	p.mu.Unlock()
	if repeat {
		return
	}
	fix := "check the broker's settings"
	switch {
	case errors.Is(f.Reason, packets.ErrorRefusedNotAuthorised), errors.Is(f.Reason, packets.ErrorRefusedBadUsernameOrPassword):
		fix = "check GNLD_MQTT_USERNAME and GNLD_MQTT_PASSWORD (or the user in GNLD_MQTT_BROKER) against the broker's accounts"
	case errors.Is(f.Reason, packets.ErrorRefusedIDRejected):
		fix = "check GNLD_MQTT_CLIENT_ID"
	}
	p.log.Warn("mqtt: the broker refused the connection; "+fix+"; retrying, results go to the spool", "broker", p.broker, "err", f.Reason)
}

// subscribe (re)subscribes every topic of Subscribe: the session is
// clean, so the broker forgets subscriptions when the connection drops.
func (p *Publisher) subscribe(c mqtt.Client) {
	for topic, h := range p.subs {
		tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { h(m.Payload(), m.Retained(), time.Now()) })
		if !tok.WaitTimeout(p.cfg.Timeout) || tok.Error() != nil {
			p.log.Warn("mqtt: subscription not acknowledged; messages on it are lost until the next connection", "topic", topic, "err", tok.Error())
		}
	}
}

// onLost runs in a paho goroutine when an established connection drops.
// A routine disconnect: one warning, then a summary from onConnect.
func (p *Publisher) onLost(_ mqtt.Client, err error) {
	p.disconnects.Add(1)
	p.mu.Lock()
	p.downSince, p.spooledDown = time.Now(), p.spooled.Load()
	p.mu.Unlock()
	p.log.Warn("mqtt: connection lost; reconnecting, results go to the spool meanwhile", "broker", p.broker, "err", err)
}

// Result queues a result for publication. It blocks while the sender's
// queue is full. Not to be called after Close.
func (p *Publisher) Result(r Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("result %s/%d: %w", r.Camera, r.Sequence, err)
	}
	p.queue <- queued{Message: Message{Topic: p.Topic(r.Camera, "result"), Payload: b}}
	return nil
}

// Map queues an anomaly map (PNG or raw bytes) for camera. Maps are not
// spooled: while the broker is away they are skipped and counted.
func (p *Publisher) Map(camera string, payload []byte) {
	p.queue <- queued{Message: Message{Topic: p.Topic(camera, "map"), Payload: payload}, bestEffort: true}
}

// Close ends the queue: Run finishes what is queued and returns.
func (p *Publisher) Close() { close(p.queue) }

// Stats returns the counters; safe from any goroutine.
func (p *Publisher) Stats() Stats {
	return Stats{
		Published: p.published.Load(), Spooled: p.spooled.Load(), Replayed: p.replayed.Load(),
		SpoolLen: p.spool.len(), SpoolDropped: p.spool.drops.Load(), SpoolWriteFailed: p.writeFailed.Load(),
		MapsSkipped: p.mapsSkipped.Load(), Unacked: p.unacked.Load(),
		Disconnects: p.disconnects.Load(), Connected: p.client.IsConnectionOpen(),
	}
}

// replayBatch bounds how many spooled results Run replays before it looks
// at new ones again (which go to the spool behind them, keeping order).
const replayBatch = 100

// Run is the sender loop; see the package comment. hard is the shutdown
// deadline: after Close, Run waits until then for the broker to take the
// spool; once hard is done nothing more is tried on the broker and what is
// left goes to (or stays in) the spool.
func (p *Publisher) Run(hard context.Context) {
	retry := time.NewTicker(time.Second) // replay even if a connect signal was missed
	defer retry.Stop()
	var stats <-chan time.Time
	if p.cfg.StatsInterval > 0 {
		t := time.NewTicker(p.cfg.StatsInterval)
		defer t.Stop()
		stats = t.C
	}
	for {
		select {
		case q, ok := <-p.queue:
			if !ok {
				p.finish(hard)
				return
			}
			p.send(hard, q)
		case <-p.kick:
			p.replay(hard, replayBatch)
		case <-retry.C:
			p.replay(hard, replayBatch)
		case <-stats:
			p.sendStats(hard)
		case <-p.statsNow:
			if p.cfg.StatsInterval > 0 {
				p.sendStats(hard)
			}
		}
	}
}

// StatsNow asks Run to publish a stats message soon, besides the timer
// (gnld does on a change of drift state). It never blocks; requests made
// while one is pending merge. With the stats topic off it does nothing.
func (p *Publisher) StatsNow() {
	select {
	case p.statsNow <- struct{}{}:
	default:
	}
}

// send publishes q, or spools it (results) or skips it (best effort). A
// result the spool cannot take (disk full, say) is published at once if
// the broker takes it (out of order: behind none of the spooled ones),
// else it is lost: counted (spool_dropped, spool_write_failed) and logged
// (spoolFailed). Stopping the daemon would not bring the disk back.
func (p *Publisher) send(ctx context.Context, q queued) {
	if q.bestEffort {
		if p.spool.len() > 0 || p.publish(ctx, q.Message, false) != nil {
			p.mapsSkipped.Add(1)
		}
		return
	}
	if p.spool.len() == 0 {
		err := p.publish(ctx, q.Message, false)
		if err == nil {
			p.published.Add(1)
			return
		}
		if !errors.Is(err, errOffline) {
			p.log.Warn("mqtt: publish failed, result spooled", "topic", q.Topic, "err", err)
		}
	}
	err := p.spool.push(q.Message)
	if err == nil {
		p.spooled.Add(1)
		p.spoolWritable()
		return
	}
	if p.spool.len() > 0 && p.publish(ctx, q.Message, false) == nil {
		p.published.Add(1)
		p.log.Warn("spool: not writable; result published ahead of the spooled ones", "topic", q.Topic, "err", err)
		return
	}
	p.spool.drops.Add(1)
	p.spoolFailed(q.Topic, err)
}

// spoolFailed counts a result lost because the spool could not be
// written, and logs it: the first loss at once, then a summary every 10 s
// while the spool stays unwritable.
func (p *Publisher) spoolFailed(topic string, err error) {
	n := p.writeFailed.Add(1)
	switch {
	case !p.spoolBroken:
		p.spoolBroken, p.brokenSince, p.brokenLog = true, n-1, time.Now()
		p.log.Error("spool: cannot write, result lost; while the broker is away every result is lost (counted in spool_dropped) until "+
			"the spool folder is writable again: free space on its file system or fix its permissions",
			"dir", p.cfg.SpoolDir, "topic", topic, "spool_len", p.spool.len(), "err", err)
	case time.Since(p.brokenLog) >= 10*time.Second:
		p.brokenLog = time.Now()
		p.log.Error("spool: still not writable, results lost", "dir", p.cfg.SpoolDir, "lost", n-p.brokenSince, "err", err)
	}
}

// spoolWritable logs the end of a spell of failed spool writes.
func (p *Publisher) spoolWritable() {
	if p.spoolBroken {
		p.spoolBroken = false
		p.log.Info("spool: writable again", "dir", p.cfg.SpoolDir, "lost", p.writeFailed.Load()-p.brokenSince)
	}
}

// replay publishes up to n spooled results, oldest first, and stops at
// the first that is not acknowledged.
//
// After a publish that was not acknowledged it waits one Config.Timeout
// before it tries again: each try holds the sender for that long, and the
// results that keep coming must get to the spool meanwhile (else the
// queue fills and the cameras' workers wait).
func (p *Publisher) replay(ctx context.Context, n int) {
	if time.Now().Before(p.replayHold) {
		return
	}
	had := p.spool.len()
	for range n {
		m, ok := p.spool.peek()
		if !ok {
			break
		}
		if err := p.publish(ctx, m, false); err != nil {
			return
		}
		p.spool.pop()
		p.published.Add(1)
		p.replayed.Add(1)
	}
	switch {
	case had > 0 && p.spool.len() == 0:
		p.log.Info("spool: replayed, empty again", "replayed_total", p.replayed.Load())
	case p.spool.len() > 0:
		select { // more to do: come back after looking at the queue
		case p.kick <- struct{}{}:
		default:
		}
	}
}

var errOffline = errors.New("not connected")

// ackErr says why tok, waited for up to timeout, did not complete well.
func ackErr(tok mqtt.Token, timeout time.Duration) error {
	if err := tok.Error(); err != nil {
		return err
	}
	return fmt.Errorf("no acknowledgement within %s", timeout)
}

// publish sends m and waits for the acknowledgement (QoS 1, 2) or the
// write (QoS 0), at most Config.Timeout.
func (p *Publisher) publish(ctx context.Context, m Message, retained bool) error {
	if ctx.Err() != nil || !p.client.IsConnectionOpen() {
		return errOffline
	}
	tok := p.client.Publish(m.Topic, p.cfg.QoS, retained, m.Payload)
	if !tok.WaitTimeout(p.cfg.Timeout) {
		p.unacked.Add(1)
		p.replayHold = time.Now().Add(p.cfg.Timeout)
		if p.unackedRow++; p.unackedRow >= maxUnacked {
			p.dropConnection()
		}
		return fmt.Errorf("no acknowledgement within %s", p.cfg.Timeout)
	}
	p.unackedRow = 0
	return tok.Error()
}

// noStore is paho's message store, kept empty: the spool is gnld's only
// redelivery. paho resends what its store holds after every automatic
// reconnect, clean session or not, marked DUP, and in doing so completes
// the token of the first attempt as if the broker had acknowledged it.
// The publish in flight when a connection dropped then counted as
// published while only paho's memory held it, and its resend raced the
// results published after the reconnect: the broker got it behind them
// (seen in TestBrokerOutagesAndRestartLoseNothing, about 1 run in 150).
// With nothing stored, that publish is not acknowledged within
// Config.Timeout, goes to the spool, and every later result goes behind it.
// Its message ID stays taken until the client disconnects (dropConnection,
// finish): one per publish cut by an outage, out of 65,535.
type noStore struct{}

func (noStore) Open()                             {}
func (noStore) Put(string, packets.ControlPacket) {}
func (noStore) Get(string) packets.ControlPacket  { return nil }
func (noStore) All() []string                     { return nil }
func (noStore) Del(string)                        {}
func (noStore) Close()                            {}
func (noStore) Reset()                            {}

// maxUnacked is how many publishes in a row may go unacknowledged before
// gnld takes the connection for dead and makes a new one.
const maxUnacked = 3

// dropConnection ends a connection that is open but does not work: the
// broker accepts publishes and acknowledges none (overloaded, or a
// network path that lets pings through). A new clean connection starts
// afresh, and the spool holds the results meanwhile; disconnecting also
// frees the message IDs of the unacknowledged publishes (see noStore).
func (p *Publisher) dropConnection() {
	p.unackedRow = 0
	n := p.disconnects.Add(1)
	p.mu.Lock()
	p.downSince, p.spooledDown = time.Now(), p.spooled.Load()
	p.mu.Unlock()
	p.log.Warn(fmt.Sprintf("mqtt: the broker acknowledged none of the last %d publishes within GNLD_MQTT_TIMEOUT; reconnecting, results go to the spool meanwhile", maxUnacked),
		"broker", p.broker, "timeout", p.cfg.Timeout, "unacked_total", p.unacked.Load(), "disconnects", n)
	p.client.Disconnect(250)
	// Connect again, in the background and retried like the first; paho
	// refuses until the disconnect has finished, which may outlast the
	// 250 ms above.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		tok := p.client.Connect()
		if !tok.WaitTimeout(20*time.Millisecond) || tok.Error() == nil {
			return // connecting, or connected
		}
	}
	p.log.Error("mqtt: could not reconnect after dropping the connection; results stay in the spool until the next start",
		"broker", p.broker)
}

func (p *Publisher) sendStats(ctx context.Context) {
	s := struct {
		Time    time.Time `json:"timestamp"`
		Device  string    `json:"device"`
		Uptime  float64   `json:"uptime_s"`
		MQTT    Stats     `json:"mqtt"`
		Model   any       `json:"model,omitempty"`
		Cameras any       `json:"cameras,omitempty"`
	}{time.Now().UTC(), p.cfg.Device, time.Since(p.start).Seconds(), p.Stats(), nil, nil}
	if p.cfg.StatsModel != nil {
		s.Model = p.cfg.StatsModel()
	}
	if p.cfg.StatsExtra != nil {
		s.Cameras = p.cfg.StatsExtra()
	}
	b, _ := json.Marshal(s) // plain structs: cannot fail
	p.publish(ctx, Message{Topic: p.Topic(p.cfg.Device, "stats"), Payload: b}, false)
}

// finish runs after Close: it replays the spool, waiting for the broker
// if need be, until the spool is empty or hard is done; then it publishes
// the final stats and "offline", and disconnects. What is left stays in the spool for the next
// run.
func (p *Publisher) finish(hard context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for p.spool.len() > 0 && hard.Err() == nil {
		before := p.spool.len()
		p.replay(hard, replayBatch)
		if p.spool.len() == before { // broker away: wait for it
			select {
			case <-p.kick:
			case <-tick.C:
			case <-hard.Done():
			}
		}
	}
	if p.cfg.StatsInterval > 0 {
		p.sendStats(hard) // the run's totals
	}
	st := p.Stats()
	if st.SpoolLen > 0 {
		p.log.Warn("mqtt: stopping with results in the spool; the next run publishes them", "spool_len", st.SpoolLen, "dir", p.cfg.SpoolDir)
	}
	p.disconnect()
	p.log.Info("mqtt: stopped", "published", st.Published, "spooled", st.Spooled, "spool_len", st.SpoolLen,
		"spool_dropped", st.SpoolDropped, "disconnects", st.Disconnects)
}

// disconnect publishes the retained "offline" (the Will covers a crash)
// and closes the connection, or stops connecting.
func (p *Publisher) disconnect() {
	if p.client.IsConnectionOpen() {
		tok := p.client.Publish(p.statusTopic(), 1, true, "offline")
		if !tok.WaitTimeout(p.cfg.Timeout) || tok.Error() != nil {
			p.log.Warn("mqtt: status offline not acknowledged", "err", ackErr(tok, p.cfg.Timeout))
		}
	}
	p.client.Disconnect(250)
}

// Result is the JSON published on gnl/<site>/<camera>/result.
type Result struct {
	RunID     string    `json:"run_id"`    // this daemon run; with camera and sequence it names the result
	Timestamp time.Time `json:"timestamp"` // frame capture time
	// Sequence: per camera, from 1; gaps are dropped, bad or (trigger
	// mode) unscored frames. 0: a trigger answered without a frame (a
	// software-triggered camera gave none; verdict NotScored;
	// Timestamp is then when it was answered).
	Sequence  uint64  `json:"sequence"`
	Camera    string  `json:"camera"`
	File      string  `json:"file,omitempty"` // source file, when known
	Model     Model   `json:"model"`          // the model that scored this frame
	Score     float32 `json:"score"`
	Threshold float32 `json:"threshold"`
	// ThresholdSource says where Threshold comes from: "bundle"
	// (model.json), "calibration" (gnlctl calibrate) or "config"
	// (GNLD_CAMERA_<NAME>_THRESHOLD).
	ThresholdSource string `json:"threshold_source"`
	Verdict         string `json:"verdict"` // "anomalous", "normal", or NotScored
	// Product is the product whose model scored the frame (GNLD_MODEL_ROOT,
	// set by a product message); absent when the camera has no product.
	Product string `json:"product,omitempty"`
	// Reason says why a frame was not scored (verdict NotScored): the
	// camera's product was refused, so it has no model it can stand behind.
	Reason string `json:"reason,omitempty"`
	// Drift is the camera's drift state when the frame was scored: "ok",
	// or "warning" when recent frames no longer look like the training
	// images, so that the verdict cannot be trusted (docs/OPERATE.md,
	// "Drift warnings"); absent when the drift monitor is off.
	Drift     string  `json:"drift,omitempty"`
	LatencyMS Latency `json:"latency_ms"`
	// Trigger mode only: the trigger's part id, and its other fields as
	// sent.
	PartID  string                     `json:"part_id,omitempty"`
	Trigger map[string]json.RawMessage `json:"trigger,omitempty"`
}

// Model names the model that made a result.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// Latency is per-stage time in milliseconds.
type Latency struct {
	Normalize float64 `json:"normalize"`
	Invoke    float64 `json:"invoke"`
	Post      float64 `json:"post"`
	Total     float64 `json:"total"` // capture to result
	// Trigger mode only: from the trigger's arrival to the result.
	Trigger float64 `json:"trigger,omitempty"`
}

// NotScored is the verdict of a frame that no model scored: its camera's
// product was refused (unknown, or its bundle failed its checks), or, for
// a trigger of a software-triggered camera, there was no frame. Score and
// threshold are 0 then; Reason says why.
const NotScored = "not_scored"

// Verdict turns the pipeline's decision into the payload's word.
func Verdict(anomalous bool) string {
	if anomalous {
		return "anomalous"
	}
	return "normal"
}

// RedactURL returns the broker URL raw with the password of its user
// information (tcp://user:pass@host) replaced by "xxxxx", for logs, errors
// and pages. It also masks what looks like user information in a string
// that does not parse as a URL.
func RedactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	at := strings.LastIndex(rest, "@")
	if !ok || at < 0 {
		return raw
	}
	user, _, _ := strings.Cut(rest[:at], ":")
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}

// ValidName reports whether s can be one level of a topic: not empty, no
// '/', '+', '#' or NUL.
func ValidName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00")
}
