package runtime

/*
#include <tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h>
*/
import "C"

import (
	"fmt"
	"strings"

	"github.com/mattn/go-tflite/delegates"
)

// The delegate settings Options.Delegate (GNLD_DELEGATE) accepts, besides
// the path of a TFLite delegate plugin .so.
const (
	XNNPACK = "xnnpack" // XNNPACK's CPU kernels (float, int8, uint8); the default
	Builtin = "builtin" // TFLite's builtin CPU kernels only
	GPU     = "gpu"     // TFLite's OpenCL GPU delegate, XNNPACK for the ops it leaves
)

// ParseDelegate checks a delegate setting and returns its canonical form:
// "" and "cpu" (the setting's older spelling) mean XNNPACK; a value with a
// slash or ending in .so is a plugin path, kept as it is.
func ParseDelegate(s string) (string, error) {
	switch s {
	case "", "cpu", XNNPACK:
		return XNNPACK, nil
	case Builtin, GPU:
		return s, nil
	}
	if strings.Contains(s, "/") || strings.HasSuffix(s, ".so") {
		return s, nil
	}
	return "", fmt.Errorf("unknown delegate %q: expected xnnpack, builtin, gpu or the path of a TFLite delegate plugin .so", s)
}

// fallbacks is the order New tries delegates in for a setting: the requested
// one, then XNNPACK, then the builtin kernels, which always work.
func fallbacks(d string) []string {
	switch d {
	case Builtin:
		return []string{Builtin}
	case XNNPACK:
		return []string{XNNPACK, Builtin}
	}
	return []string{d, XNNPACK, Builtin}
}

// newDelegates makes the delegates for one setting, in the order TFLite
// applies them; XNNPACK packs its weights into cache (nil: its own). The
// caller deletes them after the interpreter.
func newDelegates(d string, threads int, cache *C.struct_TfLiteXNNPackDelegateWeightsCache) ([]delegates.Delegater, error) {
	switch d {
	case Builtin:
		return nil, nil
	case XNNPACK:
		x, err := newXNNPACK(threads, cache)
		if err != nil {
			return nil, err
		}
		return []delegates.Delegater{x}, nil
	case GPU:
		g, err := newGPU()
		if err != nil {
			return nil, err
		}
		// The GPU delegate takes what it supports; XNNPACK runs the rest
		// (when it cannot be made, TFLite's builtin kernels do).
		if x, err := newXNNPACK(threads, cache); err == nil {
			return []delegates.Delegater{g, x}, nil
		}
		return []delegates.Delegater{g}, nil
	}
	e, err := newExternalDelegate(d)
	if err != nil {
		return nil, err
	}
	return []delegates.Delegater{e}, nil
}
