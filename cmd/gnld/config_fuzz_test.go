package main

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FuzzConfig sets one GNLD_ variable, name and value both fuzzed, beside
// GNLD_CAMERAS=a=dir:/x, and reads the configuration as gnld does at
// start-up. loadConfig must return a usable configuration (see usable) or
// one line that names the variable; it must never panic. Names that do
// not start with GNLD_ get it, so mutated names test the check for
// misspelled variables. Seeds: every variable of systemd/gnld.env.example
// with its example value, and the bad values of TestConfigErrors.
//
// envconfig reads the process environment only, so the target sets it:
// the fuzzing engine runs one input at a time per process, and t.Setenv
// restores the environment after each.
func FuzzConfig(f *testing.F) {
	example, err := os.ReadFile("../../systemd/gnld.env.example")
	if err != nil {
		f.Fatal(err)
	}
	for line := range strings.Lines(string(example)) {
		k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "#"), "=")
		if ok && strings.HasPrefix(k, prefix+"_") {
			f.Add(k, v)
		}
	}
	for _, kv := range [][2]string{
		{"GNLD_CAMERAS", "Line1=dir:/x"}, {"GNLD_CAMERAS", "a"}, {"GNLD_CAMERAS", "a=ftp://x"}, {"GNLD_CAMERAS", "a=dir:/x,b=/dev/video0"},
		{"GNLD_THREDS", "2"}, {"GNLD_THREADS", "two"}, {"GNLD_MQTT_QOS", "3"}, {"GNLD_SHUTDOWN_TIMEOUT", "soon"},
		{"GNLD_LOG_LEVEL", "loud"}, {"GNLD_CAMERA_A_ROI", "1,2,3"}, {"GNLD_CAMERA_A_ROI", "10,20,100,50"},
		{"GNLD_CAMERA_A_THRESHOLD", "-1"}, {"GNLD_CAMERA_A_FPS", "2.5"}, {"GNLD_CAMERA_A_LIVE", "maybe"},
		{"GNLD_CAMERA_A_LOOP", "true"}, {"GNLD_CAMERA_A_TRIGGER", "mqtt"}, {"GNLD_CAMERA_A_SOURCE", "gst:videotestsrc ! appsink"},
		{"GNLD_CAMERA_B_ROTATE", "90"}, {"GNLD_HTTP_ADDR", "9464"}, {"GNLD_DRIFT_THRESHOLD", "3"}, {"GNLD_TRIGGER_QUEUE", "16"},
		// numbers that parse but that gnld cannot use
		{"GNLD_CAMERA_A_FPS", "NaN"}, {"GNLD_CAMERA_A_THRESHOLD", "+Inf"}, {"GNLD_DRIFT_THRESHOLD", "Inf"},
		{"GNLD_CAMERA_A_ROI", "9223372036854775807,0,1,1"}, {"GNLD_TRIGGER_QUEUE", "9223372036854775807"}, {"GNLD_THREADS", "2147483648"},
	} {
		f.Add(kv[0], kv[1])
	}
	f.Fuzz(func(t *testing.T, key, value string) {
		if !strings.HasPrefix(key, prefix+"_") {
			key = prefix + "_" + key
		}
		if strings.ContainsAny(key, "=\x00") || strings.Contains(value, "\x00") {
			return // no environment can hold it
		}
		env := map[string]string{"GNLD_CAMERAS": "a=dir:/x"}
		env[key] = value
		setEnv(t, env)
		cfg, err := loadConfig()
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") || !namesVariable(msg, key) {
				t.Fatalf("%q=%q: error %q is not one line naming the variable", key, value, msg)
			}
			return
		}
		if err := usable(cfg); err != nil {
			t.Fatalf("%q=%q accepted, but %v", key, value, err)
		}
	})
}

// namesVariable reports whether an error about key names it, or for the
// cameras' variables the camera's own variable.
func namesVariable(msg, key string) bool {
	if strings.HasPrefix(key, "GNLD_CAMERA") && strings.Contains(msg, "GNLD_CAMERA") {
		return true // GNLD_CAMERAS=a,b: GNLD_CAMERA_B_SOURCE is missing
	}
	return strings.Contains(msg, key) || strings.Contains(msg, strconv.Quote(key)) // quoted if it has a line break
}

// usable checks what the rest of gnld takes for granted in a configuration
// that loadConfig accepted, and builds the parts that size memory from it.
func usable(c *Config) error {
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	if !finite(c.DriftThreshold) {
		return fmt.Errorf("drift threshold %v", c.DriftThreshold)
	}
	for i, cc := range c.cameras {
		if cc.Threshold != nil && !finite(*cc.Threshold) {
			return fmt.Errorf("camera %s: threshold %v", cc.name, *cc.Threshold)
		}
		cap := c.captureConfig(i)
		if !finite(cap.FPS) {
			return fmt.Errorf("camera %s: fps %v", cc.name, cap.FPS)
		}
		if r := cap.ROI; !r.Empty() && (r.Min.X < 0 || r.Min.Y < 0) {
			return fmt.Errorf("camera %s: crop %v", cc.name, r)
		}
		q := newTriggerQueue(cc.name, c.TriggerQueue, slog.New(slog.NewTextHandler(io.Discard, nil)))
		q.stop(nil)
	}
	if c.Threads > 256 {
		return fmt.Errorf("%d TFLite threads", c.Threads)
	}
	return nil
}
