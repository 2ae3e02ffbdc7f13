package runtime

import (
	"encoding/binary"
	"fmt"
	"math"
)

// verifyModel checks the parts of a TFLite flatbuffer (schema.fbs,
// version 3) that TFLite 2.14 trusts, before the file is handed to it.
//
// TFLite's TfLiteModelCreateFromFile runs the flatbuffers verifier, so a
// truncated file or an offset that points outside the file is refused.
// That verifier checks the layout only, not what the numbers mean, and
// TfLiteInterpreterCreate with the XNNPACK delegate trusts them: damaged
// copies of the default model (TestCorruptModel) made it abort (SIGABRT)
// on an operator input naming tensor 531466759 of a subgraph with 360
// tensors, and crash (SIGSEGV) on an operator that reads a tensor only a
// later operator writes. Either ends the whole process. So verifyModel
// checks, for every subgraph, that
//
//   - each tensor's buffer names one of the model's buffers, its shape
//     has no negative size, its quantization scales are positive normal
//     floats and its zero points fit its type (FuzzNew found an int8
//     tensor with zero point 64441286650, and TestBadQuantizationRefused
//     scales of -1, +Inf, 0, NaN and 1e-38, that made
//     TfLiteInterpreterCreate with XNNPACK crash, SIGSEGV; the builtin
//     kernels ran the bad scales);
//   - the subgraph's inputs and outputs, and each operator's inputs,
//     outputs and intermediates, name tensors of the subgraph (an
//     operator input may be -1: an optional input left out);
//   - each operator's opcode_index names one of the model's operator codes;
//   - operators come in an order they can run in: every tensor an operator
//     reads is a subgraph input, a constant (its buffer holds data), a
//     variable, or the output of an operator before it.
//
// Every read is bounds-checked, so verifyModel itself is safe on any bytes
// (FuzzVerifyModel). The field numbers below are schema.fbs's:
// Model{operator_codes 1, subgraphs 2, buffers 4}, Buffer{data 0,
// offset 1}, SubGraph{tensors 0, inputs 1, outputs 2, operators 3},
// Tensor{shape 0, type 1, buffer 2, quantization 4, is_variable 5},
// QuantizationParameters{scale 2, zero_point 3}, Operator{opcode_index 0,
// inputs 1, outputs 2, intermediates 8}.
func verifyModel(data []byte) error {
	fb := flatbuf{data: data}
	if len(data) < 8 || string(data[4:8]) != "TFL3" {
		return fmt.Errorf("no TFL3 file identifier: not a TensorFlow Lite model (%d bytes)", len(data))
	}
	model := fb.root()
	opcodes := fb.vector(model, 1)
	buffers := fb.vector(model, 4)
	subgraphs := fb.vector(model, 2)
	if fb.err == nil && subgraphs.n == 0 {
		return fmt.Errorf("no subgraphs")
	}
	// constant[b]: buffer b holds data (weights), in the file or, for
	// models over 2 GB, after it (offset above 1).
	constant := make([]bool, buffers.n)
	for b := 0; b < buffers.n && fb.err == nil; b++ {
		buf := fb.table(buffers, b)
		constant[b] = fb.bytes(buf, 0) > 0 || fb.uint32(buf, 1) > 1
	}
	for s := 0; s < subgraphs.n && fb.err == nil; s++ {
		if err := verifySubgraph(&fb, s, opcodes.n, constant); err != nil {
			return err
		}
	}
	return fb.err
}

// verifySubgraph checks subgraph s (see verifyModel).
func verifySubgraph(fb *flatbuf, s, opcodes int, constant []bool) error {
	sg := fb.table(fb.vector(fb.root(), 2), s)
	tensors := fb.vector(sg, 0)
	// ready[t]: tensor t has a value before the next operator runs: it is
	// a constant, a variable, an input, or an earlier operator's output.
	ready := make([]bool, tensors.n)
	for t := 0; t < tensors.n && fb.err == nil; t++ {
		tensor := fb.table(tensors, t)
		b := fb.uint32(tensor, 2)
		if int64(b) >= int64(len(constant)) {
			return fmt.Errorf("subgraph %d, tensor %d: buffer %d, but the model has %d buffers", s, t, b, len(constant))
		}
		ready[t] = constant[b] || fb.uint8(tensor, 5) != 0 // is_variable
		shape := fb.vector(tensor, 0)
		for i := 0; i < shape.n && fb.err == nil; i++ {
			if d := fb.int32At(shape, i); d < 0 {
				return fmt.Errorf("subgraph %d, tensor %d: shape has size %d", s, t, d)
			}
		}
		quant := fb.table1(tensor, 4)
		scales := fb.vector(quant, 2)
		for i := 0; i < scales.n && fb.err == nil; i++ {
			// XNNPACK's own rule; a scale of 0, below 0, NaN, Inf or
			// subnormal quantizes nothing.
			if x := float64(math.Float32frombits(fb.u32(scales.at + 4*i))); !(x >= 0x1p-126 && x <= math.MaxFloat32) {
				return fmt.Errorf("subgraph %d, tensor %d: quantization scale %g, want a positive normal float", s, t, x)
			}
		}
		lo, hi := zeroPointRange(fb.uint8(tensor, 1))
		zp := fb.vector8(quant, 3)
		for i := 0; i < zp.n && fb.err == nil; i++ {
			if z := fb.int64At(zp, i); z < lo || z > hi {
				return fmt.Errorf("subgraph %d, tensor %d: quantization zero point %d outside [%d, %d], the range of its type", s, t, z, lo, hi)
			}
		}
	}
	// each calls f on the tensor indices of v, after checking that they
	// name a tensor of this subgraph (or are -1, if optional).
	each := func(what string, v vec, optional bool, f func(int) error) error {
		for i := 0; i < v.n && fb.err == nil; i++ {
			x := fb.int32At(v, i)
			if x == -1 && optional {
				continue
			}
			if x < 0 || int(x) >= tensors.n {
				return fmt.Errorf("subgraph %d: %s names tensor %d, but the subgraph has %d tensors", s, what, x, tensors.n)
			}
			if err := f(int(x)); err != nil {
				return err
			}
		}
		return nil
	}
	markReady := func(t int) error { ready[t] = true; return nil }
	if err := each("input", fb.vector(sg, 1), false, markReady); err != nil {
		return err
	}
	ops := fb.vector(sg, 3)
	for o := 0; o < ops.n && fb.err == nil; o++ {
		op := fb.table(ops, o)
		if c := fb.uint32(op, 0); int64(c) >= int64(opcodes) {
			return fmt.Errorf("subgraph %d, operator %d: operator code %d, but the model has %d", s, o, c, opcodes)
		}
		err := each(fmt.Sprintf("operator %d's input", o), fb.vector(op, 1), true, func(t int) error {
			if !ready[t] {
				return fmt.Errorf("subgraph %d: operator %d reads tensor %d before any operator writes it (not an input, a constant nor a variable)", s, o, t)
			}
			return nil
		})
		if err == nil {
			err = each(fmt.Sprintf("operator %d's output", o), fb.vector(op, 2), false, markReady)
		}
		if err == nil {
			err = each(fmt.Sprintf("operator %d's intermediate", o), fb.vector(op, 8), false, markReady)
		}
		if err != nil {
			return err
		}
	}
	return each("output", fb.vector(sg, 2), false, func(int) error { return nil })
}

// zeroPointRange is the range a zero point of a tensor of TensorType typ
// must lie in: its type's range for the 8-bit integers, int32's for the
// rest (TFLite keeps zero points as int32).
func zeroPointRange(typ uint8) (lo, hi int64) {
	switch typ {
	case 3: // UINT8
		return 0, 255
	case 9: // INT8
		return -128, 127
	}
	return math.MinInt32, math.MaxInt32
}

// flatbuf reads a flatbuffer with every offset checked against its
// length. The first read outside it sets err; later reads return zeros.
type flatbuf struct {
	data  []byte
	err   error
	reads int // a budget: offsets that point back at data already read could make the walk endless
}

// vec is a vector: n elements of 4 bytes (scalars or offsets) from at,
// or of 8 bytes (vector8).
type vec struct{ at, n int }

func (f *flatbuf) fail(format string, a ...any) {
	if f.err == nil {
		f.err = fmt.Errorf("flatbuffer: "+format, a...)
	}
}

// u32 reads 4 bytes at p.
func (f *flatbuf) u32(p int) uint32 {
	if f.err != nil || p < 0 || p > len(f.data)-4 {
		f.fail("offset %d outside the file (%d bytes)", p, len(f.data))
		return 0
	}
	// A valid file is read about once, in 4-byte words, so reading its
	// length in words (plus room for vtables) is plenty.
	if f.reads++; f.reads > len(f.data)/4+1<<16 {
		f.fail("its offsets make it read the same bytes over and over")
		return 0
	}
	return binary.LittleEndian.Uint32(f.data[p:])
}

func (f *flatbuf) u16(p int) uint16 {
	if f.err != nil || p < 0 || p > len(f.data)-2 {
		f.fail("offset %d outside the file (%d bytes)", p, len(f.data))
		return 0
	}
	return binary.LittleEndian.Uint16(f.data[p:])
}

// deref follows the unsigned offset stored at p.
func (f *flatbuf) deref(p int) int { return p + int(f.u32(p)) }

// root is the position of the root table.
func (f *flatbuf) root() int { return f.deref(0) }

// field is the position of field i of the table at t, or 0 if absent.
func (f *flatbuf) field(t, i int) int {
	vt := t - int(int32(f.u32(t)))
	size := int(f.u16(vt))
	if f.err != nil || 4+2*i+2 > size {
		return 0
	}
	off := int(f.u16(vt + 4 + 2*i))
	if off == 0 {
		return 0
	}
	return t + off
}

// uint32 reads scalar field i of the table at t (default 0).
func (f *flatbuf) uint32(t, i int) uint32 {
	if p := f.field(t, i); p != 0 {
		return f.u32(p)
	}
	return 0
}

// uint8 reads a one-byte scalar field i of the table at t (default 0).
func (f *flatbuf) uint8(t, i int) uint8 {
	p := f.field(t, i)
	if p == 0 || f.err != nil {
		return 0
	}
	if p >= len(f.data) {
		f.fail("offset %d outside the file (%d bytes)", p, len(f.data))
		return 0
	}
	return f.data[p]
}

// bytes is the length of the byte vector field i of the table at t (0 if
// absent).
func (f *flatbuf) bytes(t, i int) int {
	p := f.field(t, i)
	if p == 0 || f.err != nil {
		return 0
	}
	v := f.deref(p)
	n := int(f.u32(v))
	if f.err == nil && n > len(f.data)-v-4 {
		f.fail("%d bytes at %d outside the file (%d bytes)", n, v, len(f.data))
		return 0
	}
	return n
}

// vector reads vector field i, of 4-byte elements, of the table at t
// (empty if absent).
func (f *flatbuf) vector(t, i int) vec { return f.vectorOf(t, i, 4) }

// vector8 reads vector field i, of 8-byte elements, of the table at t.
func (f *flatbuf) vector8(t, i int) vec { return f.vectorOf(t, i, 8) }

// vectorOf reads vector field i, of size-byte elements, of the table at
// t (empty if absent, or if t is 0: an absent table, as table1 gives).
func (f *flatbuf) vectorOf(t, i, size int) vec {
	if t == 0 {
		return vec{}
	}
	p := f.field(t, i)
	if p == 0 || f.err != nil {
		return vec{}
	}
	v := f.deref(p)
	n := int(f.u32(v))
	if f.err == nil && (n < 0 || n > (len(f.data)-v-4)/size) {
		f.fail("vector of %d %d-byte elements at %d outside the file (%d bytes)", n, size, v, len(f.data))
		return vec{}
	}
	return vec{at: v + 4, n: n}
}

// table1 is the position of the table in field i of the table at t, or 0
// if absent.
func (f *flatbuf) table1(t, i int) int {
	if p := f.field(t, i); p != 0 && f.err == nil {
		return f.deref(p)
	}
	return 0
}

// int64At is element i of a vector of int64.
func (f *flatbuf) int64At(v vec, i int) int64 {
	lo := f.u32(v.at + 8*i)
	hi := f.u32(v.at + 8*i + 4)
	return int64(uint64(hi)<<32 | uint64(lo))
}

// table is the position of element i of a vector of tables.
func (f *flatbuf) table(v vec, i int) int { return f.deref(v.at + 4*i) }

// int32At is element i of a vector of int32.
func (f *flatbuf) int32At(v vec, i int) int32 { return int32(f.u32(v.at + 4*i)) }
