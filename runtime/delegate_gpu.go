//go:build gpu

package runtime

import (
	"errors"

	"github.com/mattn/go-tflite/delegates"
	"github.com/mattn/go-tflite/delegates/gpu/cl"
)

// newDelegate makes the delegate named by Options.Delegate ("gpu" or a path).
// This file is built with -tags gpu and links libtensorflowlite_c_delegate_gpu.
func newDelegate(name string) (delegates.Delegater, error) {
	if name != "gpu" {
		return newExternalDelegate(name)
	}
	d := cl.New(nil)
	if d == nil {
		return nil, errors.New("OpenCL GPU delegate: no usable OpenCL device")
	}
	return d, nil
}
