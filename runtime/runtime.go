// Package runtime runs a TensorFlow Lite model through the TFLite C API. It is
// the only package in gnld that imports go-tflite or links
// libtensorflowlite_c; everything above it sees Interpreter and Tensor.
//
// Lifecycle: New loads the model, applies the delegate (XNNPACK by default;
// on failure it falls back to XNNPACK, then to TFLite's builtin kernels, with
// a warning), allocates tensors and checks that the model has the
// shape gnld expects: one NHWC image input [1,H,W,3] and one map output
// [1,h,w,1] or [1,h,w], each float32, int8 or uint8, and at most one more
// output (Extra: a teachable memory's descriptors, BUNDLE.md). The caller
// then writes the input through Input(), calls Invoke and reads Output(),
// as often as it likes, and finally calls Close once.
//
// An Interpreter is NOT safe for concurrent use: TFLite interpreters keep
// per-call state in their tensors. Use one per goroutine at a time
// (gnld's cameras borrow one for each frame). Several interpreters made
// together from one Model (LoadModel, Model.NewInterpreters) share the
// model's bytes and XNNPACK's packed weights.
package runtime

/*
#include <tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"

	tflite "github.com/mattn/go-tflite"
	"github.com/mattn/go-tflite/delegates"
)

// Options choose how the model runs.
type Options struct {
	// Threads for the CPU kernels (XNNPACK's and the builtin ones); 0 means 1.
	Threads int
	// Delegate: "" or "xnnpack" (the default; "cpu" is the older spelling)
	// for XNNPACK's CPU kernels, "builtin" for TFLite's builtin kernels only,
	// "gpu" for the OpenCL GPU delegate with XNNPACK for what it leaves, or
	// the path of a TFLite delegate plugin .so (the entry points TFLite's
	// external delegate loads). See ParseDelegate.
	Delegate string
}

// Interpreter is one loaded model, ready to Invoke. Not goroutine-safe.
type Interpreter struct {
	shared    *Model // the model it was made from; released by Close
	options   *tflite.InterpreterOptions
	interp    *tflite.Interpreter
	delegates []delegates.Delegater // in the order applied; deleted after interp
	observer  *observer
	errs      *errorLog
	applied   string
	placement Placement
	in, out   *Tensor
	extra     *Tensor // output 1, or nil
}

// New loads modelPath and prepares it to run with opt: LoadModel and one
// interpreter of it, which owns the model. When the requested delegate
// cannot be created or applied, New logs one warning naming the reason and
// runs on the next in line instead: XNNPACK, then the builtin kernels. It
// fails only if the builtin kernels cannot run the model, or the delegate
// setting is invalid.
func New(modelPath string, opt Options) (*Interpreter, error) {
	if _, err := ParseDelegate(opt.Delegate); err != nil {
		return nil, err
	}
	m, err := LoadModel(modelPath)
	if err != nil {
		return nil, err
	}
	defer m.Close() // the interpreter holds it
	ips, err := m.NewInterpreters(opt, 1)
	if err != nil {
		return nil, err
	}
	return ips[0], nil
}

// build makes an interpreter for model with the delegate setting d (its
// XNNPACK delegate packing weights into cache) and allocates its tensors.
// On error it frees everything but model.
func build(model *tflite.Model, threads int, d string, cache *C.struct_TfLiteXNNPackDelegateWeightsCache) (*Interpreter, error) {
	ip := &Interpreter{applied: d}
	ip.options = tflite.NewInterpreterOptions()
	if ip.options == nil {
		return nil, errors.New("cannot create TFLite interpreter options")
	}
	ip.options.SetNumThread(threads)
	ip.errs = newErrorLog(ip.options)
	ds, err := newDelegates(d, threads, cache)
	if err != nil {
		ip.free()
		return nil, err
	}
	ip.delegates = ds
	for _, x := range ds {
		ip.options.AddDelegate(x)
	}
	if ip.observer = newObserver(); ip.observer != nil {
		ip.options.AddDelegate(ip.observer)
	}
	ip.interp = tflite.NewInterpreter(model, ip.options)
	if ip.interp == nil {
		msg := ip.errs.take()
		var err error
		if d == Builtin {
			err = fmt.Errorf("TensorFlow Lite cannot build an interpreter: %s; usually an op or op version newer than this TFLite (2.14): re-export with the pinned converter (`gnl export`)", msg)
		} else {
			err = fmt.Errorf("%s delegate: %s", d, msg)
		}
		ip.free()
		return nil, err
	}
	if st := ip.interp.AllocateTensors(); st != tflite.OK {
		err := fmt.Errorf("TensorFlow Lite cannot allocate tensors: %s", ip.errs.take())
		ip.free()
		return nil, err
	}
	if ip.observer != nil {
		ip.placement = ip.observer.placement()
	}
	return ip, nil
}

// check verifies gnld's model shape and binds the input and output tensors.
func (ip *Interpreter) check(modelPath string) (*Interpreter, error) {
	fail := func(format string, a ...any) (*Interpreter, error) {
		ip.Close()
		return nil, fmt.Errorf("%s: %s; export an image-to-map model with `gnl export`", modelPath, fmt.Sprintf(format, a...))
	}
	if n, m := ip.interp.GetInputTensorCount(), ip.interp.GetOutputTensorCount(); n != 1 || m < 1 || m > 2 {
		return fail("model has %d inputs and %d outputs, want 1 and 1 (or 2: the map and a teachable memory's descriptors)", n, m)
	}
	in, err := newTensor(ip.interp.GetInputTensor(0))
	if err != nil {
		return fail("input: %v", err)
	}
	out, err := newTensor(ip.interp.GetOutputTensor(0))
	if err != nil {
		return fail("output: %v", err)
	}
	if s := in.info.Shape; len(s) != 4 || s[0] != 1 || s[3] != 3 {
		return fail("input shape %v, want [1 H W 3] (NHWC)", s)
	}
	s := out.info.Shape
	if !(len(s) == 4 && s[0] == 1 && s[3] == 1) && !(len(s) == 3 && s[0] == 1) {
		return fail("output shape %v, want [1 h w 1] or [1 h w]", s)
	}
	if ip.interp.GetOutputTensorCount() == 2 {
		extra, err := newTensor(ip.interp.GetOutputTensor(1))
		if err != nil {
			return fail("output 1: %v", err)
		}
		ip.extra = extra
	}
	ip.in, ip.out = in, out
	return ip, nil
}

// Input is the input tensor; write into its buffer, then Invoke.
func (ip *Interpreter) Input() *Tensor { return ip.in }

// Output is the output tensor; its buffer holds the result of the last
// Invoke until the next one.
func (ip *Interpreter) Output() *Tensor { return ip.out }

// Extra is output 1 (a teachable memory's descriptors, read by package
// teach), or nil for a model with one output. Like Output, valid until the
// next Invoke.
func (ip *Interpreter) Extra() *Tensor { return ip.extra }

// Delegate says which delegate setting the model runs with: "xnnpack",
// "builtin", "gpu" or the plugin's path (after any fallback).
func (ip *Interpreter) Delegate() string { return ip.applied }

// Placement says how many nodes each delegate took and which operators
// stayed on TFLite's builtin kernels.
func (ip *Interpreter) Placement() Placement { return ip.placement }

// Invoke runs the model once on the current input.
func (ip *Interpreter) Invoke() error {
	if st := ip.interp.Invoke(); st != tflite.OK {
		return fmt.Errorf("tflite invoke: %s", ip.errs.take())
	}
	return nil
}

// Close frees the interpreter and its delegates, and the model if this was
// the last interpreter of a closed Model. The tensors' buffers are invalid
// afterwards. Close is idempotent.
func (ip *Interpreter) Close() {
	ip.free()
	if ip.shared != nil {
		ip.shared.release()
		ip.shared = nil
	}
	trimHeap()
}

// free releases everything but the model, in reverse order of creation.
func (ip *Interpreter) free() {
	if ip.interp != nil {
		ip.interp.Delete()
		ip.interp = nil
	}
	for _, d := range ip.delegates {
		d.Delete()
	}
	ip.delegates = nil
	if ip.observer != nil {
		ip.observer.Delete()
		ip.observer = nil
	}
	if ip.options != nil {
		ip.options.Delete()
		ip.options = nil
	}
	if ip.errs != nil {
		ip.errs.free()
		ip.errs = nil
	}
	ip.in, ip.out = nil, nil
}

// oneLine joins TFLite's multi-line messages for an error string.
func oneLine(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "no message from TFLite"
	}
	return strings.Join(lines, "; ")
}
