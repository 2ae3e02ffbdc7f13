package runtime

/*
#include <tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h>

static TfLiteDelegate* gnl_xnnpack_create(int threads, struct TfLiteXNNPackDelegateWeightsCache* cache) {
	TfLiteXNNPackDelegateOptions o = TfLiteXNNPackDelegateOptionsDefault();
	o.num_threads = threads;
	// Interpreters of one model share its packed weights (runtime.Model).
	o.weights_cache = cache;
	// int8 and uint8 quantized operators too, not only float ones.
	o.flags |= TFLITE_XNNPACK_DELEGATE_FLAG_QS8 | TFLITE_XNNPACK_DELEGATE_FLAG_QU8;
	return TfLiteXNNPackDelegateCreate(&o);
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// xnnpackDelegate is TFLite's XNNPACK delegate: XNNPACK's CPU kernels for
// float, int8 (QS8) and uint8 (QU8) operators, on its own thread pool.
type xnnpackDelegate struct{ d *C.TfLiteDelegate }

func newXNNPACK(threads int, cache *C.struct_TfLiteXNNPackDelegateWeightsCache) (*xnnpackDelegate, error) {
	d := C.gnl_xnnpack_create(C.int(threads), cache)
	if d == nil {
		return nil, errors.New("XNNPACK delegate: cannot be created (XNNPACK does not support this CPU?)")
	}
	return &xnnpackDelegate{d: d}, nil
}

func (x *xnnpackDelegate) Delete()             { C.TfLiteXNNPackDelegateDelete(x.d) }
func (x *xnnpackDelegate) Ptr() unsafe.Pointer { return unsafe.Pointer(x.d) }
