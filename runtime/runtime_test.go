package runtime

import (
	"bytes"
	"fmt"
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
		if ip.Delegate() != XNNPACK {
			t.Errorf("delegate %q, want the default, xnnpack", ip.Delegate())
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

// TestDelegateFallback: a delegate that cannot be applied leaves the model
// on XNNPACK, with one warning that says why.
func TestDelegateFallback(t *testing.T) {
	for _, d := range []string{"/nonexistent/libdelegate.so", tinyFloat} {
		logs := captureLogs(t)
		ip, err := New(tinyFloat, Options{Delegate: d})
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if ip.Delegate() != XNNPACK {
			t.Errorf("%s: delegate %q, want xnnpack", d, ip.Delegate())
		}
		if strings.Count(logs.String(), "level=WARN") != 1 || !strings.Contains(logs.String(), "running on xnnpack") ||
			!strings.Contains(logs.String(), "external delegate "+d) {
			t.Errorf("%s: want one warning naming the plugin, logs %q", d, logs.String())
		}
		ip.Close()
	}
}

func TestParseDelegate(t *testing.T) {
	for in, want := range map[string]string{
		"": XNNPACK, "cpu": XNNPACK, "xnnpack": XNNPACK, "builtin": Builtin, "gpu": GPU,
		"/opt/libdelegate.so": "/opt/libdelegate.so", "libedgetpu.so": "libedgetpu.so",
	} {
		if got, err := ParseDelegate(in); err != nil || got != want {
			t.Errorf("ParseDelegate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"xnnpak", "GPU", "opencl"} {
		_, err := ParseDelegate(bad)
		if err == nil || !strings.Contains(err.Error(), "expected xnnpack, builtin, gpu or the path") {
			t.Errorf("ParseDelegate(%q): %v", bad, err)
		}
		if _, err := New(tinyFloat, Options{Delegate: bad}); err == nil {
			t.Errorf("New with delegate %q: no error", bad)
		}
	}
}

// TestPlacement: the builtin setting leaves every node to TFLite's kernels;
// XNNPACK takes every node but the cosine head's SUM and RSQRT (which TFLite
// 2.14's XNNPACK delegate lacks), and String says so.
func TestPlacement(t *testing.T) {
	ip, err := New(tinyInt8, Options{Delegate: Builtin})
	if err != nil {
		t.Fatal(err)
	}
	p := ip.Placement()
	ip.Close()
	if p.Nodes < 10 || len(p.Delegates) != 0 || p.BuiltinNodes() != p.Nodes || p.MACs == 0 || p.BuiltinMACs != p.MACs ||
		!strings.Contains(p.String(), "CONV_2D") {
		t.Errorf("builtin placement %+v: %s", p, p)
	}
	ip, err = New(tinyInt8, Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := ip.Placement()
	ip.Close()
	want := fmt.Sprintf("xnnpack 64/%d nodes (3 partitions); builtin kernels 15/%d nodes: SUM 9, RSQRT 6", p.Nodes, p.Nodes)
	if q.String() != want || q.MACs != p.MACs || q.BuiltinMACs != 0 {
		t.Errorf("xnnpack placement %q (%d of %d MACs on builtin kernels), want %q and none", q, q.BuiltinMACs, q.MACs, want)
	}
}

// captureLogs sends slog's default logger to a buffer for the test.
func captureLogs(t *testing.T) *bytes.Buffer {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &logs
}
