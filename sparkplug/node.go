// Package sparkplug publishes gnld's results as a Sparkplug B edge node
// (Eclipse Sparkplug 3.0), beside the JSON topics of package publish.
//
// The device is the edge node, each camera one of its devices:
//
//	spBv1.0/<group>/NBIRTH/<node>            bdSeq, Node Control/Rebirth, Properties/*
//	spBv1.0/<group>/DBIRTH/<node>/<camera>   every device metric, its type and last value
//	spBv1.0/<group>/DDATA/<node>/<camera>    one per result (DeviceMetrics)
//	spBv1.0/<group>/NDEATH/<node>            bdSeq: the Will, and sent on a clean stop
//	spBv1.0/<group>/NCMD/<node>              subscribed: Node Control/Rebirth
//
// Sparkplug has a connection of its own (its Will is the NDEATH, whose
// bdSeq changes with every MQTT CONNECT), with a client ID of its own.
// Births, DDATA and the NDEATH are QoS 0 and not retained, the Will QoS 1,
// as the specification requires. bdSeq starts at 0, goes up by one per
// CONNECT (255 wraps to 0) and is kept in a file, so that a restart does
// not repeat the last run's. seq is 0 in every NBIRTH and goes up by one
// per message of the node (255 wraps to 0).
//
// Delivery: at most once. A result that comes while there is no Sparkplug
// session (broker away, connecting) is not sent, only counted (NotSent);
// Sparkplug has no replay of DDATA. The JSON result topics, with their
// spool, are the lossless record.
//
// Lifecycle: New checks the config and reads bdSeq. Start connects in the
// background, waiting at most Config.Timeout for the first births. Result
// may be called from any goroutine between Start and Stop and never
// blocks: a full queue drops the result and counts it (Dropped). Stop is
// called once, after the last Result: it sends what is queued, publishes
// the NDEATH and disconnects. All methods do nothing on a nil *Node, so
// that callers need not check whether Sparkplug is on.
package sparkplug

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"gnld/publish"
)

// Namespace is the first level of every Sparkplug B topic.
const Namespace = "spBv1.0"

// RebirthMetric is the node control metric a host sets to true in an NCMD
// to ask for new births.
const RebirthMetric = "Node Control/Rebirth"

// BdSeqFile is the name of the file in Config.StateDir that keeps the
// next bdSeq across restarts.
const BdSeqFile = "sparkplug-bdseq"

// MetricDef names a device metric and its Sparkplug data type.
type MetricDef struct {
	Name string
	Type DataType
}

// DeviceMetrics are the metrics of each camera, in DBIRTH and in every
// DDATA, in this order (see deviceMetrics for their values).
var DeviceMetrics = []MetricDef{
	{"score", Double},
	{"threshold", Double},
	{"verdict", String},
	{"anomalous", Boolean},
	{"drift", String},
	{"part_id", String},
	{"model_version", String},
	{"sequence", UInt64},
	{"latency_total_ms", Double},
	{"latency_invoke_ms", Double},
}

// Property is a String metric "Properties/<Name>" of the NBIRTH.
type Property struct{ Name, Value string }

// Config configures a Node.
type Config struct {
	Broker   string // as publish.Config.Broker
	ClientID string // unique per device, and not the JSON publisher's
	Username string
	Password string
	TLS      *tls.Config // nil: plain TCP

	Group      string     // Sparkplug group_id
	Node       string     // edge_node_id
	Devices    []string   // device_id of each camera; born in this order
	Properties []Property // in the NBIRTH

	Timeout      time.Duration // limit for connecting and each publish
	ReconnectMax time.Duration // cap of the reconnect backoff (from 1 s, doubling)
	StateDir     string        // folder of BdSeqFile
	Queue        int           // results waiting for the sender; 0: 256
}

// Stats are the node's counters since start.
type Stats struct {
	Sent      uint64 `json:"sent"`      // DDATA messages written to the connection
	NotSent   uint64 `json:"not_sent"`  // results that came while no session was up, or whose publish failed
	Dropped   uint64 `json:"dropped"`   // results dropped because the queue was full
	Births    uint64 `json:"births"`    // NBIRTH messages (connects and rebirths)
	Rebirths  uint64 `json:"rebirths"`  // rebirth requests answered
	Connects  uint64 `json:"connects"`  // sessions begun
	BdSeq     uint64 `json:"bd_seq"`    // of the last session
	Connected bool   `json:"connected"` // a session is up
}

// Node is a Sparkplug B edge node; see the package comment.
type Node struct {
	cfg    Config
	log    *slog.Logger
	broker string // cfg.Broker without its password, for logs

	queue   chan publish.Result
	rebirth chan struct{} // a rebirth request (NCMD), merged
	stopBy  atomic.Int64  // Stop's deadline, unix ns
	done    chan struct{} // run has returned
	born    chan struct{} // closed after the first births
	bornOne sync.Once

	sent, notSent, dropped, births, rebirths, connects, bdSeq atomic.Uint64
	connected                                                 atomic.Bool
	dropLog                                                   atomic.Int64 // unix ns of the last log line about drops

	// Used only by run's goroutine.
	bdFile      string
	nextBd      uint64 // bdSeq of the next CONNECT
	seq         uint64 // seq of the next message
	last        map[string]publish.Result
	order       []string // devices in birth order: cfg.Devices, then others as they come
	lastRefusal string   // the last connect failure logged; "" once connected
}

// New checks cfg and reads the bdSeq file. It does not connect.
func New(cfg Config, log *slog.Logger) (*Node, error) {
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("sparkplug: broker %q: expected a URL such as tcp://host:1883", publish.RedactURL(cfg.Broker))
	}
	for _, id := range append([]string{cfg.Group, cfg.Node}, cfg.Devices...) {
		if !publish.ValidName(id) {
			return nil, fmt.Errorf("sparkplug: id %q: expected a name without / + #", id)
		}
	}
	if cfg.Timeout <= 0 || cfg.ReconnectMax <= 0 {
		return nil, errors.New("sparkplug: timeout and reconnect max must be positive")
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 256
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("sparkplug: %w", err)
	}
	n := &Node{
		cfg: cfg, log: log, broker: u.Redacted(),
		queue: make(chan publish.Result, cfg.Queue), rebirth: make(chan struct{}, 1),
		done: make(chan struct{}), born: make(chan struct{}),
		bdFile: filepath.Join(cfg.StateDir, BdSeqFile), last: map[string]publish.Result{},
		order: append([]string(nil), cfg.Devices...),
	}
	n.nextBd, err = readBdSeq(n.bdFile)
	if err != nil {
		log.Warn("sparkplug: bdSeq file unreadable; starting from 0", "file", n.bdFile, "err", err)
	}
	return n, nil
}

// readBdSeq returns the bdSeq kept in file, 0 when there is none.
func readBdSeq(file string) (uint64, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v > 255 {
		return 0, fmt.Errorf("not a number from 0 to 255: %q", b)
	}
	return v, nil
}

// takeBdSeq returns the bdSeq for the CONNECT about to be sent and keeps
// the one after it in the file (written to a temporary file, then renamed).
func (n *Node) takeBdSeq() uint64 {
	v := n.nextBd
	n.nextBd = (v + 1) % 256
	tmp := n.bdFile + ".tmp"
	err := os.WriteFile(tmp, []byte(strconv.FormatUint(n.nextBd, 10)+"\n"), 0o600)
	if err == nil {
		err = os.Rename(tmp, n.bdFile)
	}
	if err != nil {
		n.log.Warn("sparkplug: cannot keep bdSeq; after a restart hosts may take an old NDEATH for the new session", "file", n.bdFile, "err", err)
	}
	return v
}

func (n *Node) topic(kind string) string {
	return Namespace + "/" + n.cfg.Group + "/" + kind + "/" + n.cfg.Node
}

func (n *Node) deviceTopic(kind, device string) string { return n.topic(kind) + "/" + device }

// Start connects in the background and waits at most Config.Timeout for
// the first births. A broker that cannot be reached is retried until Stop.
func (n *Node) Start() {
	if n == nil {
		return
	}
	go n.run()
	select {
	case <-n.born:
	case <-time.After(n.cfg.Timeout):
		n.log.Warn("sparkplug: no session yet; retrying in the background, results are not sent over Sparkplug until then",
			"broker", n.broker, "waited", n.cfg.Timeout)
	}
}

// Result queues r for a DDATA on its camera's device. It never blocks.
// Not to be called after Stop.
func (n *Node) Result(r publish.Result) {
	if n == nil {
		return
	}
	select {
	case n.queue <- r:
	default:
		d := n.dropped.Add(1)
		now := time.Now().UnixNano()
		if last := n.dropLog.Load(); now-last >= int64(10*time.Second) && n.dropLog.CompareAndSwap(last, now) {
			n.log.Warn("sparkplug: queue full, results dropped (the JSON topics keep them)", "dropped_total", d)
		}
	}
}

// Stop sends the results queued, publishes the NDEATH and disconnects,
// trying the broker until deadline at most; then it returns.
func (n *Node) Stop(deadline time.Time) {
	if n == nil {
		return
	}
	n.stopBy.Store(deadline.UnixNano())
	close(n.queue)
	select {
	case <-n.done:
	case <-time.After(time.Until(deadline) + n.cfg.Timeout + time.Second):
		n.log.Warn("sparkplug: did not stop in time")
	}
}

// Stats returns the counters; safe from any goroutine.
func (n *Node) Stats() Stats {
	if n == nil {
		return Stats{}
	}
	return Stats{
		Sent: n.sent.Load(), NotSent: n.notSent.Load(), Dropped: n.dropped.Load(), Births: n.births.Load(),
		Rebirths: n.rebirths.Load(), Connects: n.connects.Load(), BdSeq: n.bdSeq.Load(), Connected: n.connected.Load(),
	}
}

// run connects, holds a session until the connection drops, and again,
// until Stop.
func (n *Node) run() {
	defer close(n.done)
	first := min(time.Second, n.cfg.ReconnectMax)
	wait := first
	for {
		c, lost, bd, err := n.connect()
		if err != nil {
			n.refused(err)
			if !n.idle(wait) {
				n.stopped()
				return
			}
			wait = min(2*wait, n.cfg.ReconnectMax)
			continue
		}
		wait = first
		if !n.session(c, lost, bd) {
			n.stopped()
			return
		}
	}
}

// connect makes a new client whose Will is the NDEATH of a new bdSeq,
// connects it (clean session) and subscribes to NCMD, as the
// specification requires before the NBIRTH. paho's own reconnecting is
// off: each CONNECT needs a Will with the next bdSeq.
func (n *Node) connect() (mqtt.Client, <-chan error, uint64, error) {
	bd := n.takeBdSeq()
	will, _ := ndeath(bd).Marshal(true) // plain values: cannot fail
	lost := make(chan error, 1)
	opts := mqtt.NewClientOptions().
		AddBroker(n.cfg.Broker).
		SetClientID(n.cfg.ClientID).
		SetUsername(n.cfg.Username).
		SetPassword(n.cfg.Password).
		SetTLSConfig(n.cfg.TLS).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(n.cfg.Timeout).
		SetWriteTimeout(n.cfg.Timeout).
		SetKeepAlive(30*time.Second).
		SetPingTimeout(n.cfg.Timeout).
		SetBinaryWill(n.topic("NDEATH"), will, 1, false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(n.cfg.Timeout + time.Second) {
		c.Disconnect(0)
		return nil, nil, bd, fmt.Errorf("no answer within %s", n.cfg.Timeout)
	}
	if err := tok.Error(); err != nil {
		return nil, nil, bd, err
	}
	sub := c.Subscribe(n.topic("NCMD"), 1, n.onCommand)
	if !sub.WaitTimeout(n.cfg.Timeout) || sub.Error() != nil {
		c.Disconnect(250) // before any NBIRTH: no NDEATH owed
		return nil, nil, bd, fmt.Errorf("NCMD subscription not acknowledged: %v", sub.Error())
	}
	return c, lost, bd, nil
}

// refused logs a failed connection when its cause differs from the last
// one logged: once, not at every retry.
func (n *Node) refused(err error) {
	why := err.Error()
	if why == n.lastRefusal {
		return
	}
	n.lastRefusal = why
	msg := "sparkplug: cannot connect; retrying, results are not sent over Sparkplug meanwhile"
	if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
		msg = "sparkplug: the broker refused the connection; check GNLD_MQTT_USERNAME and GNLD_MQTT_PASSWORD; retrying"
	}
	n.log.Warn(msg, "broker", n.broker, "err", err)
}

// idle waits for the next connect, taking results meanwhile: they are not
// sent, only counted. It returns false once Stop was called.
func (n *Node) idle(wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case r, ok := <-n.queue:
			if !ok {
				return false
			}
			n.remember(r)
			n.notSent.Add(1)
		case <-t.C:
			return true
		}
	}
}

// remember keeps r as its device's current values, for the next DBIRTH.
func (n *Node) remember(r publish.Result) {
	if !slices.Contains(n.order, r.Camera) {
		n.order = append(n.order, r.Camera)
	}
	n.last[r.Camera] = r
}

// session publishes the births and then a DDATA per result, and answers
// rebirth requests, until the connection drops (true) or Stop (false).
func (n *Node) session(c mqtt.Client, lost <-chan error, bd uint64) bool {
	n.connects.Add(1)
	n.bdSeq.Store(bd)
	n.connected.Store(true)
	defer n.connected.Store(false)
	if n.lastRefusal != "" || n.connects.Load() > 1 {
		n.log.Info("sparkplug: connection back", "broker", n.broker, "bdSeq", bd, "not_sent_total", n.notSent.Load())
	} else {
		n.log.Info("sparkplug: connected", "broker", n.broker, "group", n.cfg.Group, "node", n.cfg.Node, "bdSeq", bd)
	}
	n.lastRefusal = ""
	select { // a request from the last session is answered by these births
	case <-n.rebirth:
	default:
	}
	n.birth(c, bd)
	n.bornOne.Do(func() { close(n.born) })
	for {
		select { // a rebirth goes before any queued result
		case <-n.rebirth:
			n.rebirths.Add(1)
			n.log.Info("sparkplug: rebirth requested (NCMD); births sent again", "bdSeq", bd)
			n.birth(c, bd)
			continue
		default:
		}
		select {
		case r, ok := <-n.queue:
			if !ok {
				n.finish(c, bd)
				return false
			}
			n.data(c, r)
		case <-n.rebirth:
			n.rebirths.Add(1)
			n.log.Info("sparkplug: rebirth requested (NCMD); births sent again", "bdSeq", bd)
			n.birth(c, bd)
		case err := <-lost:
			n.log.Warn("sparkplug: connection lost; reconnecting, results are not sent over Sparkplug meanwhile (the JSON topics keep them)",
				"broker", n.broker, "err", err)
			return true
		}
	}
}

// birth publishes the NBIRTH (seq 0) and a DBIRTH per device.
func (n *Node) birth(c mqtt.Client, bd uint64) {
	n.seq = 0
	now := nowMS()
	p := &Payload{Metrics: []Metric{
		{Name: "bdSeq", Type: Int64, Long: bd, Timestamp: now},
		{Name: RebirthMetric, Type: Boolean, Bool: false, Timestamp: now},
	}}
	for _, pr := range n.cfg.Properties {
		p.Metrics = append(p.Metrics, Metric{Name: "Properties/" + pr.Name, Type: String, String: pr.Value, Timestamp: now, Null: pr.Value == ""})
	}
	if err := n.publish(c, n.topic("NBIRTH"), p, true); err != nil {
		n.log.Warn("sparkplug: NBIRTH not sent", "err", err)
	}
	n.births.Add(1)
	for _, dev := range n.order {
		n.dbirth(c, dev)
	}
}

func (n *Node) dbirth(c mqtt.Client, dev string) {
	var r *publish.Result
	if last, ok := n.last[dev]; ok {
		r = &last
	}
	p := &Payload{Metrics: deviceMetrics(r, nowMS())}
	if err := n.publish(c, n.deviceTopic("DBIRTH", dev), p, true); err != nil {
		n.log.Warn("sparkplug: DBIRTH not sent", "device", dev, "err", err)
	}
}

// data publishes r as a DDATA of its device, after the device's DBIRTH
// if it was not born in this session (a camera not in Config.Devices).
func (n *Node) data(c mqtt.Client, r publish.Result) {
	newDevice := !slices.Contains(n.order, r.Camera)
	n.remember(r)
	if newDevice {
		n.dbirth(c, r.Camera) // with r's values: the DDATA repeats them
	}
	if by := n.stopBy.Load(); by != 0 && time.Now().UnixNano() > by {
		n.notSent.Add(1)
		return
	}
	p := &Payload{Metrics: deviceMetrics(&r, 0)}
	if err := n.publish(c, n.deviceTopic("DDATA", r.Camera), p, false); err != nil {
		n.notSent.Add(1)
		n.log.Debug("sparkplug: DDATA not sent", "camera", r.Camera, "seq", r.Sequence, "err", err)
		return
	}
	n.sent.Add(1)
}

var errOffline = errors.New("not connected")

// publish sends p (QoS 0, not retained) with the next seq and the time
// now, and waits at most Config.Timeout for it to be written.
func (n *Node) publish(c mqtt.Client, topic string, p *Payload, types bool) error {
	if !c.IsConnectionOpen() {
		return errOffline
	}
	p.Timestamp, p.Seq, p.HasSeq = nowMS(), n.seq, true
	b, err := p.Marshal(types)
	if err != nil {
		return err
	}
	n.seq = (n.seq + 1) % 256
	tok := c.Publish(topic, 0, false, b)
	if !tok.WaitTimeout(n.cfg.Timeout) {
		return fmt.Errorf("not written within %s", n.cfg.Timeout)
	}
	return tok.Error()
}

// finish runs at Stop, the queue sent: it publishes the NDEATH (QoS 1, as
// the Will) and disconnects, which cancels the Will.
func (n *Node) finish(c mqtt.Client, bd uint64) {
	b, _ := ndeath(bd).Marshal(true)
	if c.IsConnectionOpen() {
		tok := c.Publish(n.topic("NDEATH"), 1, false, b)
		if !tok.WaitTimeout(n.cfg.Timeout) || tok.Error() != nil {
			n.log.Warn("sparkplug: NDEATH not acknowledged; the broker sends the Will instead", "err", tok.Error())
		}
	}
	c.Disconnect(250)
}

func (n *Node) stopped() {
	st := n.Stats()
	n.log.Info("sparkplug: stopped", "sent", st.Sent, "not_sent", st.NotSent, "dropped", st.Dropped,
		"births", st.Births, "rebirths", st.Rebirths, "connects", st.Connects, "bdSeq", st.BdSeq)
}

// onCommand runs in a paho goroutine for each NCMD: a Node Control/Rebirth
// that is true asks run for new births. Other commands are ignored.
func (n *Node) onCommand(_ mqtt.Client, m mqtt.Message) {
	p, err := Unmarshal(m.Payload())
	if err != nil {
		n.log.Warn("sparkplug: NCMD not readable, ignored", "err", err)
		return
	}
	for _, mt := range p.Metrics {
		if mt.Name == RebirthMetric && mt.ValueField == fMetricBool && mt.Bool {
			select {
			case n.rebirth <- struct{}{}:
			default:
			}
			return
		}
	}
	n.log.Debug("sparkplug: NCMD without a rebirth request, ignored", "metrics", len(p.Metrics))
}

// ndeath is the NDEATH payload of bdSeq bd: no seq, the bdSeq metric only.
func ndeath(bd uint64) *Payload {
	now := nowMS()
	return &Payload{Timestamp: now, Metrics: []Metric{{Name: "bdSeq", Type: Int64, Long: bd, Timestamp: now}}}
}

// deviceMetrics are DeviceMetrics' values for r, stamped with r's capture
// time; r nil (a DBIRTH before the camera's first result): every metric
// null, stamped now. Empty strings are null (drift with the monitor off,
// part_id outside trigger mode), and so are score, threshold and
// anomalous of a frame that was not scored (verdict not_scored).
func deviceMetrics(r *publish.Result, now uint64) []Metric {
	ms := make([]Metric, len(DeviceMetrics))
	for i, d := range DeviceMetrics {
		ms[i] = Metric{Name: d.Name, Type: d.Type, Timestamp: now, Null: r == nil}
	}
	if r == nil {
		return ms
	}
	scored := r.Verdict != publish.NotScored
	set := func(i int, null bool, f func(m *Metric)) {
		ms[i].Timestamp = uint64(r.Timestamp.UnixMilli())
		ms[i].Null = null
		if !null {
			f(&ms[i])
		}
	}
	str := func(i int, s string) { set(i, s == "", func(m *Metric) { m.String = s }) }
	set(0, !scored, func(m *Metric) { m.Double = shortest(r.Score) })
	set(1, !scored, func(m *Metric) { m.Double = shortest(r.Threshold) })
	str(2, r.Verdict)
	set(3, !scored, func(m *Metric) { m.Bool = r.Verdict == publish.Verdict(true) })
	str(4, r.Drift)
	str(5, r.PartID)
	str(6, r.Model.Version)
	set(7, false, func(m *Metric) { m.Long = r.Sequence })
	set(8, false, func(m *Metric) { m.Double = r.LatencyMS.Total })
	set(9, false, func(m *Metric) { m.Double = r.LatencyMS.Invoke })
	return ms
}

// shortest is the float64 nearest to x's shortest decimal form, the
// number the JSON result carries: 0.123 rather than 0.12300000339746475.
func shortest(x float32) float64 {
	if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
		return float64(x)
	}
	v, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
	return v
}

func nowMS() uint64 { return uint64(time.Now().UnixMilli()) }
