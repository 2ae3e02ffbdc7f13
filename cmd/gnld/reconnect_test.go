package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"gnld/internal/testbroker"
	"gnld/publish"
)

// soakReconnectTarget is make soak's target for the median time from the
// broker's return to gnld's reconnection (docs/SOAK.md).
const soakReconnectTarget = 2 * time.Second

// TestMQTTReconnectAfterLongOutage: with the default
// GNLD_MQTT_RECONNECT_MAX, gnld finds a broker that comes back from a long
// outage within that cap and a connect, not after a backoff that has kept
// doubling for the whole outage. (paho's backoff doubles from 1 s: with the
// former 30 s cap, an 8 s outage left gnld away for up to 7 s more, and
// the soak's median reconnect was 8.3 s.)
func TestMQTTReconnectAfterLongOutage(t *testing.T) {
	b := testbroker.Start(t)
	setEnv(t, map[string]string{
		"GNLD_CAMERAS": "cam=dir:/x", "GNLD_MQTT_BROKER": b.URL(), "GNLD_DEVICE": "dev",
		"GNLD_SPOOL_DIR": t.TempDir(), "GNLD_STATS_INTERVAL": "0",
	})
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MQTTReconnectMax > soakReconnectTarget {
		t.Fatalf("default GNLD_MQTT_RECONNECT_MAX=%s: above make soak's reconnect target %s", cfg.MQTTReconnectMax, soakReconnectTarget)
	}
	p, err := publish.New(cfg.publishConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p.Connect()
	hard, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(hard); close(done) }()
	defer func() { p.Close(); cancel(); <-done }()
	waitConnected := func(want bool, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for p.Stats().Connected != want {
			if time.Since(start) > limit {
				t.Fatalf("connected still %v after %s", !want, limit)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitConnected(true, 5*time.Second)
	b.Stop()
	waitConnected(false, 5*time.Second)
	time.Sleep(8 * time.Second) // the backoff would reach 8 s uncapped
	b.Restart()
	limit := soakReconnectTarget + 1500*time.Millisecond // and a connect
	if took := waitConnected(true, 40*time.Second); took > limit {
		t.Errorf("reconnected %s after the broker came back; want within %s (GNLD_MQTT_RECONNECT_MAX=%s)",
			took.Round(time.Millisecond), limit, cfg.MQTTReconnectMax)
	}
}
