package runtime

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	tinyInt8  = "../models/testdata/tiny/model.tflite"
	tinyFloat = "../models/testdata/tiny-float/model.tflite"
	futureOp  = "../models/testdata/future-op/model.tflite"
)

func TestNewTiny(t *testing.T) {
	for _, c := range []struct {
		path string
		in   DType
	}{{tinyInt8, Int8}, {tinyFloat, Float32}} {
		ip, err := New(c.path, Options{Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		in, out := ip.Input().Info(), ip.Output().Info()
		if in.DType != c.in || !equal(in.Shape, 1, 128, 160, 3) {
			t.Errorf("%s: input %+v", c.path, in)
		}
		if out.DType != Float32 || !equal(out.Shape, 1, 32, 40, 1) || out.Quant.Scale != 0 {
			t.Errorf("%s: output %+v", c.path, out)
		}
		if c.in == Int8 && (ip.Input().Int8s() == nil || in.Quant.Scale <= 0) {
			t.Errorf("%s: int8 input without buffer or scale: %+v", c.path, in)
		}
		if err := ip.Invoke(); err != nil {
			t.Fatal(err)
		}
		if m := ip.Output().Float32s(); len(m) != 32*40 || m[0] == 0 {
			t.Errorf("%s: output %d values, first %v", c.path, len(m), m[:1])
		}
		if ip.Delegate() != "cpu" {
			t.Errorf("delegate %q", ip.Delegate())
		}
		ip.Close()
		ip.Close() // idempotent
	}
}

func equal(s []int, want ...int) bool {
	if len(s) != len(want) {
		return false
	}
	for i := range s {
		if s[i] != want[i] {
			return false
		}
	}
	return true
}

// TestErrors checks that a model TFLite 2.14 cannot run fails with an error
// naming the file, TFLite's own reason (through gnld's error reporter) and
// the fix.
func TestErrors(t *testing.T) {
	corrupt := filepath.Join(t.TempDir(), "model.tflite")
	if err := os.WriteFile(corrupt, []byte("not a flatbuffer at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want []string
	}{
		{"/nonexistent/model.tflite", []string{"/nonexistent/model.tflite: cannot open model", "gnl export"}},
		{corrupt, []string{corrupt + ": not a TensorFlow Lite flatbuffer", "gnl export"}},
		{futureOp, []string{futureOp + ":", "CONV_2D", "version '99'", "gnl export"}},
	} {
		_, err := New(c.path, Options{})
		if err == nil {
			t.Fatalf("%s: no error", c.path)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
	}
}

// TestDelegateFallback: a delegate that cannot be applied runs the model on
// the CPU and says so in a warning.
func TestDelegateFallback(t *testing.T) {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	defer slog.SetDefault(old)
	for _, d := range []string{"gpu", "/nonexistent/libdelegate.so", tinyFloat} {
		logs.Reset()
		ip, err := New(tinyFloat, Options{Delegate: d})
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if ip.Delegate() != "cpu" {
			t.Errorf("%s: delegate %q, want cpu", d, ip.Delegate())
		}
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "running on the CPU") {
			t.Errorf("%s: no warning, logs %q", d, logs.String())
		}
		ip.Close()
	}
}
