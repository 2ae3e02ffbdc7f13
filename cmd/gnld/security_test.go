package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"gnld/internal/testbroker"
)

// secret returns a distinctive password no log line could hold by chance.
func secret(t *testing.T, what string) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return what + "-S3cr3t-" + hex.EncodeToString(b)
}

// everything GETs every HTTP endpoint gnld serves (the page's API
// included) and returns the bodies, for grepping.
func everything(t *testing.T, base string) string {
	var all strings.Builder
	for _, path := range []string{"/", "/metrics", "/healthz", "/readyz", "/api/state"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(&all, "== GET %s %s\n%s\n", path, resp.Status, b)
	}
	// The page's event stream: its first events.
	c := http.Client{Timeout: time.Second}
	if resp, err := c.Get(base + "/api/events"); err == nil {
		b, _ := io.ReadAll(resp.Body) // ends with the client's timeout
		resp.Body.Close()
		fmt.Fprintf(&all, "== GET /api/events\n%s\n", b)
	}
	return all.String()
}

// MQTT credentials never appear in what gnld says: its log (stdout and
// stderr of the real binary), its errors, the stats and status topics,
// /metrics, /healthz, /readyz, the page and its API, gnld -h and a config
// error. The broker requires a password; gnld runs once with wrong ones
// (GNLD_MQTT_PASSWORD, and in the broker URL), which the broker refuses,
// and once with the right one in each place, which it accepts.
func TestCredentialsNeverShown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir, _ := mtdSamples(t, 2, "good")
	bin := buildGnld(t)
	const user = "line-gnld"
	good, wrongEnv, wrongURL := secret(t, "Right"), secret(t, "WrongEnv"), secret(t, "WrongURL")
	b := testbroker.StartAuth(t, user, good)
	sub := testbroker.Subscribe(t, b, "gnl/#")
	hostPort := strings.TrimPrefix(b.URL(), "tcp://")

	var said strings.Builder // everything gnld said, in all runs
	for _, tc := range []struct {
		name     string
		env      map[string]string
		accepted bool
	}{
		{"wrong GNLD_MQTT_PASSWORD", map[string]string{"GNLD_MQTT_USERNAME": user, "GNLD_MQTT_PASSWORD": wrongEnv}, false},
		{"wrong password in the URL", map[string]string{"GNLD_MQTT_BROKER": "tcp://" + user + ":" + wrongURL + "@" + hostPort}, false},
		{"right GNLD_MQTT_PASSWORD", map[string]string{"GNLD_MQTT_USERNAME": user, "GNLD_MQTT_PASSWORD": good}, true},
		{"right password in the URL", map[string]string{"GNLD_MQTT_BROKER": "tcp://" + user + ":" + good + "@" + hostPort}, true},
	} {
		port := testbroker.FreePort(t)
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		env := baseEnv(t, b.URL(), map[string]string{
			"GNLD_CAMERAS": "cam=dir:" + dir, "GNLD_CAMERA_CAM_LOOP": "true", "GNLD_CAMERA_CAM_FPS": "10",
			"GNLD_HTTP_ADDR": fmt.Sprintf(":%d", port), "GNLD_STATS_INTERVAL": "300ms", "GNLD_SHUTDOWN_TIMEOUT": "2s", "GNLD_LOG_LEVEL": "info",
		})
		for k, v := range tc.env {
			env[k] = v
		}
		cmd := exec.Command(bin)
		cmd.Env = environ(env)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		waitFor(t, 30*time.Second, tc.name+": the HTTP listener", func() bool {
			resp, err := http.Get(base + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})
		n := len(sub.On("/dev/stats"))
		if tc.accepted {
			sub.WaitFor(t, 20*time.Second, tc.name+": stats", func([]testbroker.Msg) bool { return len(sub.On("/dev/stats")) > n+1 })
		} else {
			for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "the broker refused the connection; check GNLD_MQTT_USERNAME"); time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%s: no refusal in the log:\n%s", tc.name, out)
				}
			}
			waitFor(t, 10*time.Second, tc.name+": /readyz to say the broker is away", func() bool {
				_, body := get(t, base+"/readyz")
				return strings.Contains(body, "not ready: mqtt: not connected to tcp://")
			})
		}
		page := everything(t, base)
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s: exit %v", tc.name, err)
		}
		if got := len(sub.On("/dev/stats")) > n; got != tc.accepted {
			t.Errorf("%s: stats reached the broker: %v, want %v (the broker must refuse a wrong password)", tc.name, got, tc.accepted)
		}
		fmt.Fprintf(&said, "==== %s\n%s\n%s\n", tc.name, out.String(), page)
	}

	// gnld -h and a configuration error, with the credentials set.
	for _, args := range [][]string{{"-h"}, {}} {
		cmd := exec.Command(bin, args...)
		cmd.Env = environ(map[string]string{"GNLD_CAMERAS": "cam=dir:" + dir, "GNLD_MQTT_QOS": "x",
			"GNLD_MQTT_PASSWORD": good, "GNLD_MQTT_BROKER": "tcp://" + user + ":" + good + "@" + hostPort})
		out, _ := cmd.CombinedOutput()
		fmt.Fprintf(&said, "==== gnld %v\n%s\n", args, out)
	}
	for _, m := range sub.Messages() {
		fmt.Fprintf(&said, "==== mqtt %s\n%s\n", m.Topic, m.Payload)
	}

	all := said.String()
	secrets := []string{good, wrongEnv, wrongURL}
	for _, s := range secrets {
		if i := strings.Index(all, s); i >= 0 {
			t.Errorf("password %q appears in what gnld said:\n...%s...", s, all[max(0, i-300):min(len(all), i+100)])
		}
	}
	for _, want := range []string{"err=\"not Authorized\"",
		"tcp://" + user + ":xxxxx@" + hostPort, "msg=\"mqtt: connected\""} {
		if !strings.Contains(all, want) {
			t.Errorf("the runs' output lacks %q", want)
		}
	}
	t.Logf("%d bytes of logs, HTTP answers, MQTT messages and help searched for %d passwords", len(all), len(secrets))
}
