package runtime

/*
#include <tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	tflite "github.com/mattn/go-tflite"
)

// Model is a model file loaded once for several interpreters: they share
// its bytes and, on XNNPACK, one copy of its packed weights (XNNPACK's
// weights cache), so that a further interpreter costs its own tensors, not
// another copy of the model. NewInterpreters makes them all at once,
// because the weights cache is frozen ("finalized") before the first
// Invoke. A Model is freed once it is closed and so is every interpreter
// made from it.
type Model struct {
	path  string
	model *tflite.Model
	cache *C.struct_TfLiteXNNPackDelegateWeightsCache
	made  bool

	mu   sync.Mutex
	refs int // the Model's own hold and its open interpreters, which close on any goroutine
}

// LoadModel reads and checks the model file at modelPath (see New for the
// errors it gives).
func LoadModel(modelPath string) (*Model, error) {
	data, err := os.ReadFile(modelPath)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot open model: %w; run `gnl export` to write the bundle, or point --model at a bundle folder", modelPath, err)
	}
	// TFLite checks the file's layout but trusts its indices; a bad one
	// can abort the process (see verifyModel). TFLite gets these same
	// bytes (newModel).
	if err := verifyModel(data); err != nil {
		return nil, fmt.Errorf("%s: not a TensorFlow Lite flatbuffer (%v: truncated or corrupt?); re-export the bundle with `gnl export`", modelPath, err)
	}
	model, err := newModel(data) // a private copy: see newModel
	if err != nil {
		return nil, fmt.Errorf("%s: %w", modelPath, err)
	}
	if model == nil {
		return nil, fmt.Errorf("%s: not a TensorFlow Lite flatbuffer (truncated or corrupt?); re-export the bundle with `gnl export`", modelPath)
	}
	return &Model{path: modelPath, model: model, cache: C.TfLiteXNNPackDelegateWeightsCacheCreate(), refs: 1}, nil
}

// NewInterpreters makes n interpreters of the model with opt, sharing its
// weights. When the requested delegate cannot be created or applied, it
// logs one warning naming the reason and runs on the next in line instead:
// XNNPACK, then the builtin kernels. It fails only if the builtin kernels
// cannot run the model, or the delegate setting is invalid. It can be
// called once per Model.
func (m *Model) NewInterpreters(opt Options, n int) ([]*Interpreter, error) {
	want, err := ParseDelegate(opt.Delegate)
	if err != nil {
		return nil, err
	}
	if m.made {
		return nil, errors.New("runtime: NewInterpreters called twice on one Model (its weights cache is frozen after the first)")
	}
	m.made = true
	threads := max(opt.Threads, 1)
	var failed []string
	for _, d := range fallbacks(want) {
		ips, err := m.build(threads, d, max(n, 1))
		if err == nil {
			if len(failed) > 0 {
				slog.Warn("delegate not applied, running on "+d+" instead", "model", m.path, "delegate", want, "err", strings.Join(failed, "; "))
			}
			return ips, nil
		}
		if d == Builtin {
			return nil, fmt.Errorf("%s: %w", m.path, err)
		}
		failed = append(failed, err.Error())
	}
	panic("unreachable: fallbacks end with the builtin kernels")
}

// build makes n interpreters with delegate setting d, then freezes the
// weights cache they packed into; on error none stays open.
func (m *Model) build(threads int, d string, n int) ([]*Interpreter, error) {
	var ips []*Interpreter
	fail := func(err error) ([]*Interpreter, error) {
		for _, ip := range ips {
			ip.Close()
		}
		return nil, err
	}
	for range n {
		ip, err := build(m.model, threads, d, m.cache)
		if err != nil {
			return fail(err)
		}
		m.mu.Lock()
		m.refs++
		m.mu.Unlock()
		ip.shared = m
		if ip, err = ip.check(m.path); err != nil {
			return fail(err)
		}
		ips = append(ips, ip)
	}
	if m.cache != nil && !bool(C.TfLiteXNNPackDelegateWeightsCacheFinalizeHard(m.cache)) {
		return fail(errors.New("XNNPACK weights cache: cannot be finalized"))
	}
	return ips, nil
}

// Close gives up the Model's own hold: it is freed now if no interpreter
// made from it is open, else with the last one.
func (m *Model) Close() { m.release() }

func (m *Model) release() {
	m.mu.Lock()
	m.refs--
	last := m.refs == 0
	m.mu.Unlock()
	if !last {
		return
	}
	m.model.Delete()
	if m.cache != nil {
		C.TfLiteXNNPackDelegateWeightsCacheDelete(m.cache)
	}
	m.model, m.cache = nil, nil
	trimHeap()
}
