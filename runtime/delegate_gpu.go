package runtime

/*
#include <tensorflow/lite/delegates/gpu/delegate.h>

static TfLiteDelegate* gnl_gpu_create(void) {
	TfLiteGpuDelegateOptionsV2 o = TfLiteGpuDelegateOptionsV2Default();
	// fp16 arithmetic where the GPU has it: maps differ from the CPU's by
	// about 1e-3 relative (see TestGPUParity), at about twice the speed.
	o.is_precision_loss_allowed = 1;
	o.inference_preference = TFLITE_GPU_INFERENCE_PREFERENCE_SUSTAINED_SPEED;
	o.inference_priority1 = TFLITE_GPU_INFERENCE_PRIORITY_MIN_LATENCY;
	o.inference_priority2 = TFLITE_GPU_INFERENCE_PRIORITY_AUTO;
	o.inference_priority3 = TFLITE_GPU_INFERENCE_PRIORITY_AUTO;
	// Quantized models as TFLite's GPU delegate handles them (int8 weights
	// and activations dequantized to float on the GPU); OpenCL only (this
	// TFLite has no OpenGL backend).
	o.experimental_flags = TFLITE_GPU_EXPERIMENTAL_FLAGS_ENABLE_QUANT | TFLITE_GPU_EXPERIMENTAL_FLAGS_CL_ONLY;
	// Several GPU partitions when unsupported ops split the graph.
	o.max_delegated_partitions = 8;
	return TfLiteGpuDelegateV2Create(&o);
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// gpuDelegate is TFLite's GPU delegate (V2) on OpenCL. TFLite opens OpenCL
// only when the interpreter applies it; newGPU asks OpenCL first, so that a
// machine without a GPU gets a clear reason rather than an OpenCL status.
type gpuDelegate struct{ d *C.TfLiteDelegate }

func newGPU() (*gpuDelegate, error) {
	if err := openCLGPU(); err != nil {
		return nil, err
	}
	d := C.gnl_gpu_create()
	if d == nil {
		return nil, errors.New("GPU delegate: cannot be created")
	}
	return &gpuDelegate{d: d}, nil
}

func (g *gpuDelegate) Delete()             { C.TfLiteGpuDelegateV2Delete(g.d) }
func (g *gpuDelegate) Ptr() unsafe.Pointer { return unsafe.Pointer(g.d) }
