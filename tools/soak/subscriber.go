package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// subscriber receives gnld's results and stats at QoS 1 with a
// persistent session (clean session false), so that what gnld publishes
// while the subscriber reconnects after a broker restart waits for it in
// the broker.
type subscriber struct {
	c  mqtt.Client
	mu sync.Mutex

	results []received
	stats   []statsMsg
	bad     []string // payloads that did not parse
}

// received is one result as it arrived.
type received struct {
	At       time.Time // arrival
	RunID    string    `json:"run_id"`
	Camera   string    `json:"camera"`
	Sequence uint64    `json:"sequence"`
	Captured time.Time `json:"timestamp"` // gnld's frame capture time
}

// statsMsg is one message of gnld's stats topic, the fields the soak
// reads.
type statsMsg struct {
	At     time.Time // arrival
	Time   time.Time `json:"timestamp"`
	Uptime float64   `json:"uptime_s"`
	MQTT   struct {
		Published    uint64 `json:"published"`
		Spooled      uint64 `json:"spooled"`
		Replayed     uint64 `json:"replayed"`
		SpoolLen     int    `json:"spool_len"`
		SpoolDropped uint64 `json:"spool_dropped"`
		Disconnects  uint64 `json:"disconnects"`
	} `json:"mqtt"`
	Cameras map[string]struct {
		Frames     uint64 `json:"frames"`
		Dropped    uint64 `json:"dropped"`
		Bad        uint64 `json:"bad"`
		Reconnects uint64 `json:"reconnects"`
		Processed  uint64 `json:"processed"`
		Skipped    uint64 `json:"skipped"`
	} `json:"cameras"`
}

func subscribe(url string, filters ...string) (*subscriber, error) {
	s := &subscriber{}
	subs := map[string]byte{}
	for _, f := range filters {
		subs[f] = 1
	}
	opts := mqtt.NewClientOptions().AddBroker(url).SetClientID("soak-subscriber").
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(250 * time.Millisecond).
		SetConnectRetry(true).SetConnectRetryInterval(250 * time.Millisecond).
		SetOrderMatters(true).
		SetDefaultPublishHandler(s.receive).
		// The session usually survives a kill (the broker's autosave), but
		// subscribing again on every connection costs nothing.
		SetOnConnectHandler(func(c mqtt.Client) { c.SubscribeMultiple(subs, nil) })
	s.c = mqtt.NewClient(opts)
	if tok := s.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscriber connect: %v", tok.Error())
	}
	if tok := s.c.SubscribeMultiple(subs, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	return s, nil
}

func (s *subscriber) receive(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case strings.HasSuffix(m.Topic(), "/result"):
		r := received{At: now}
		if err := json.Unmarshal(m.Payload(), &r); err != nil || r.RunID == "" || r.Sequence == 0 {
			s.bad = append(s.bad, string(m.Payload()))
			return
		}
		s.results = append(s.results, r)
	case strings.HasSuffix(m.Topic(), "/stats"):
		st := statsMsg{At: now}
		if err := json.Unmarshal(m.Payload(), &st); err != nil {
			s.bad = append(s.bad, string(m.Payload()))
			return
		}
		s.stats = append(s.stats, st)
	}
}

func (s *subscriber) close() { s.c.Disconnect(250) }

// snapshot returns copies of what has arrived.
func (s *subscriber) snapshot() ([]received, []statsMsg, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.results...), append([]statsMsg(nil), s.stats...), append([]string(nil), s.bad...)
}
