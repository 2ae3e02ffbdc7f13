package runtime

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const defaultModel = "../models/default/model.tflite"

// corruption is one damaged copy of a model file.
type corruption struct {
	name string
	data []byte
}

// corruptions damages model in the ways a file on a device gets damaged:
// cut short, single bits flipped, a run of bytes overwritten, and random
// bytes behind a valid TFLite header. n bit flips and n overwrites are
// drawn from a fixed seed, so a failure names a case that can be rerun.
func corruptions(model []byte, n int) []corruption {
	size := len(model)
	var out []corruption
	for _, cut := range []int{0, 1, 8, 64, 4096, size / 8, size / 2, size - 4096, size - 1} {
		out = append(out, corruption{fmt.Sprintf("truncated to %d bytes", cut), model[:cut]})
	}
	r := rand.New(rand.NewPCG(11, uint64(n)))
	// Most of the file is weights, where damage changes numbers only; the
	// damage that matters hits the tables that say how operators and
	// tensors connect, so three quarters of it goes there.
	tables := structure(model)
	pos := func(i int) int {
		if i%4 == 0 || len(tables) == 0 {
			return r.IntN(size)
		}
		return tables[r.IntN(len(tables))]
	}
	for i := range n {
		at, bit := pos(i), r.IntN(8)
		d := clone(model)
		d[at] ^= 1 << bit
		out = append(out, corruption{fmt.Sprintf("bit %d of byte %d flipped", bit, at), d})
	}
	for i := range n {
		at := pos(i)
		d := clone(model)
		k := copy(d[at:], randomBytes(r, 8))
		out = append(out, corruption{fmt.Sprintf("%d bytes at %d overwritten", k, at), d})
	}
	for _, k := range []int{8, 1024, size} {
		d := randomBytes(r, k)
		copy(d[4:], "TFL3") // the file identifier TFLite looks for
		out = append(out, corruption{fmt.Sprintf("%d random bytes with a TFL3 header", k), d})
	}
	return out
}

// structure lists the byte positions of the first subgraph's operator
// inputs and outputs and its tensors' tables and shapes.
func structure(model []byte) []int {
	fb := flatbuf{data: model}
	var at []int
	span := func(from, n int) {
		for p := from; p < from+n && p < len(model); p++ {
			at = append(at, p)
		}
	}
	sg := fb.table(fb.vector(fb.root(), 2), 0)
	ops := fb.vector(sg, 3)
	for o := 0; o < ops.n && fb.err == nil; o++ {
		op := fb.table(ops, o)
		for _, field := range []int{0, 1, 2} { // opcode_index, inputs, outputs
			if field == 0 {
				if p := fb.field(op, 0); p != 0 {
					span(p, 4)
				}
				continue
			}
			v := fb.vector(op, field)
			span(v.at-4, 4+4*v.n)
		}
	}
	tensors := fb.vector(sg, 0)
	for t := 0; t < tensors.n && fb.err == nil; t++ {
		tensor := fb.table(tensors, t)
		span(tensor, 16)
		v := fb.vector(tensor, 0)
		span(v.at-4, 4+4*v.n)
	}
	return at
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestCorruptModel loads damaged copies of the default bundle's model,
// each in a child process (a crash in TFLite's C code would end the
// process, and this test must see it to report it): New must refuse each
// with an error, or give an interpreter that runs. GNLD_CORRUPT_CASES sets
// the number of bit flips and overwrites (default 12 each; the fuzzing
// note's study ran 400).
func TestCorruptModel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: loads the default model once per case")
	}
	model, err := os.ReadFile(defaultModel)
	if err != nil {
		t.Fatal(err)
	}
	n := 12
	if s := os.Getenv("GNLD_CORRUPT_CASES"); s != "" {
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatalf("GNLD_CORRUPT_CASES=%q: %v", s, err)
		}
	}
	dir := t.TempDir()
	outcomes := map[string]int{}
	for i, c := range corruptions(model, n) {
		path := filepath.Join(dir, fmt.Sprintf("case%d.tflite", i))
		if err := os.WriteFile(path, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestLoadOneModel$", "-test.v")
		cmd.Env = append(os.Environ(), "GNLD_LOAD_ONE="+path)
		out, err := cmd.CombinedOutput()
		cancel()
		_, outcome, found := strings.Cut(string(out), "outcome: ")
		outcome, _, _ = strings.Cut(outcome, "\n")
		if err != nil || !found {
			t.Errorf("%s (%s): the process died: %v\n%s", c.name, path, err, out)
			outcome = "crash"
			os.Link(path, filepath.Join(os.TempDir(), fmt.Sprintf("gnld-corrupt-%d.tflite", i)))
		}
		outcomes[outcome]++
		t.Logf("%-40s %s", c.name, outcome)
	}
	t.Logf("outcomes: %v", outcomes)
}

// TestLoadOneModel is TestCorruptModel's child: it loads the model in
// GNLD_LOAD_ONE with New, runs it once if it loads, and prints the outcome.
func TestLoadOneModel(t *testing.T) {
	path := os.Getenv("GNLD_LOAD_ONE")
	if path == "" {
		t.Skip("run by TestCorruptModel")
	}
	ip, err := New(path, Options{})
	if err != nil {
		fmt.Printf("outcome: refused: %s\n", classify(err))
		return
	}
	defer ip.Close()
	if err := ip.Invoke(); err != nil {
		fmt.Printf("outcome: loads, invoke refused\n")
		return
	}
	fmt.Printf("outcome: loads and runs\n")
}

// classify names the step of New that refused a model.
func classify(err error) string {
	s := err.Error()
	for _, step := range []struct{ needle, name string }{
		{"not a TensorFlow Lite flatbuffer (truncated", "TFLite's flatbuffer verifier"},
		{"not a TensorFlow Lite flatbuffer", "gnld's verifyModel"},
		{"cannot build an interpreter", "interpreter builder"},
		{"cannot allocate tensors", "tensor allocation"},
		{"want 1 and 1", "gnld's shape check"},
		{"want [1", "gnld's shape check"},
		{"tensor", "gnld's tensor check"},
	} {
		if strings.Contains(s, step.needle) {
			return step.name
		}
	}
	return s
}

// TestDamagedOperatorRefused replays, on the default model, the three
// crashes TestCorruptModel found (see verifyModel): operator 3's weights
// naming tensor 531466759 of the subgraph's few hundred (SIGABRT in TfLiteInterpreterCreate with
// XNNPACK), and operators 2 and 146 reading the output of the operator
// after them (SIGSEGV there). All pass TFLite's flatbuffer verifier. New
// must refuse them with an error naming the operator and the tensor.
func TestDamagedOperatorRefused(t *testing.T) {
	for _, c := range []struct {
		op, input int
		tensor    int // -1: the next operator's first output
		want      string
	}{
		{3, 1, 531466759, "operator 3's input names tensor 531466759, but the subgraph has %d tensors"},
		{2, 0, -1, "operator 2 reads tensor %d before any operator writes it"},
		{146, 0, -1, "operator 146 reads tensor %d before any operator writes it"},
	} {
		data, err := os.ReadFile(defaultModel)
		if err != nil {
			t.Fatal(err)
		}
		fb := flatbuf{data: data}
		subgraph := fb.table(fb.vector(fb.root(), 2), 0)
		tensors, ops := fb.vector(subgraph, 0), fb.vector(subgraph, 3)
		inputs := fb.vector(fb.table(ops, c.op), 1)
		x := uint32(c.tensor)
		if c.tensor == -1 {
			x = uint32(fb.int32At(fb.vector(fb.table(ops, c.op+1), 2), 0))
		}
		if fb.err != nil || inputs.n <= c.input {
			t.Fatalf("operator %d input %d not found: %v", c.op, c.input, fb.err)
		}
		binary.LittleEndian.PutUint32(data[inputs.at+4*c.input:], x)
		want := fmt.Sprintf(c.want, tensors.n)
		if c.tensor == -1 {
			want = fmt.Sprintf(c.want, x)
		}
		requireRefused(t, data, fmt.Sprintf("operator %d input %d = tensor %d", c.op, c.input, x), want)
	}
}

// requireRefused writes a damaged model and loads it with each CPU
// delegate: New must refuse it, with an error that says want and the fix
// (re-export). what names the damage in the failure message.
func requireRefused(t *testing.T, data []byte, what, want string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.tflite")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{XNNPACK, Builtin} {
		ip, err := New(path, Options{Delegate: d})
		if err == nil {
			ip.Close()
			t.Fatalf("%s: %s loaded", d, what)
		}
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "re-export") {
			t.Errorf("%s: error %q, want it to say %q and the fix", d, err, want)
		}
	}
}

// TestVerifyModelAcceptsModels: every model in the repository passes.
func TestVerifyModelAcceptsModels(t *testing.T) {
	for _, p := range []string{tinyInt8, tinyFloat, futureOp, defaultModel} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyModel(data); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestBadQuantizationRefused replays crashes of TfLiteInterpreterCreate
// with XNNPACK (SIGSEGV; the builtin kernels ran the bad scales): the one
// FuzzNew found (testdata/fuzz/FuzzNew), tensor 39 of the tiny int8 model
// with quantization zero point 64441286650, and those a scan of every
// tensor's scales found: -1 and +Inf on tensors 25, 39, 44 and 49, and 0,
// NaN and 1e-38 on tensors 40 and 45. New must refuse each, on either
// delegate, with an error naming the tensor.
func TestBadQuantizationRefused(t *testing.T) {
	for _, c := range []struct {
		tensor int
		zero   int64   // written over every zero point, if not 0
		scale  float32 // written over every scale, if zero is 0
		want   string
	}{
		{39, 64441286650, 0, "quantization zero point 64441286650 outside [-128, 127]"},
		{0, 64441286650, 0, "quantization zero point 64441286650 outside [-128, 127]"},
		{25, 0, -1, "quantization scale -1, want a positive normal float"},
		{39, 0, float32(math.Inf(1)), "quantization scale +Inf"},
		{40, 0, 0, "quantization scale 0,"},
		{45, 0, float32(math.NaN()), "quantization scale NaN"},
		{40, 0, 1e-38, "quantization scale 9.99"},
	} {
		data, err := os.ReadFile(tinyInt8)
		if err != nil {
			t.Fatal(err)
		}
		fb := flatbuf{data: data}
		tensors := fb.vector(fb.table(fb.vector(fb.root(), 2), 0), 0)
		quant := fb.table1(fb.table(tensors, c.tensor), 4)
		zp, scales := fb.vector8(quant, 3), fb.vector(quant, 2)
		if fb.err != nil || zp.n == 0 || scales.n == 0 {
			t.Fatalf("tensor %d of %s is not quantized: %v", c.tensor, tinyInt8, fb.err)
		}
		for i := 0; i < zp.n && c.zero != 0; i++ {
			binary.LittleEndian.PutUint64(data[zp.at+8*i:], uint64(c.zero))
		}
		for i := 0; i < scales.n && c.zero == 0; i++ {
			binary.LittleEndian.PutUint32(data[scales.at+4*i:], math.Float32bits(c.scale))
		}
		want := fmt.Sprintf("tensor %d: %s", c.tensor, c.want)
		requireRefused(t, data, want, want)
	}
}
