package runtime

/*
#cgo LDFLAGS: -ltensorflowlite_c
#include <stdlib.h>
#include <tensorflow/lite/delegates/external/external_delegate.h>

static TfLiteDelegate* gnl_external_delegate(const char* path) {
	TfLiteExternalDelegateOptions o = TfLiteExternalDelegateOptionsDefault(path);
	return TfLiteExternalDelegateCreate(&o);
}
*/
import "C"

import (
	"fmt"
	"os"
	"unsafe"
)

// externalDelegate is a delegate loaded from a shared library through
// TFLite's external delegate API (in libtensorflowlite_c since 2.x). go-tflite's
// delegates/external links a library Debian does not ship, so gnld calls the
// C API itself.
type externalDelegate struct{ d *C.TfLiteDelegate }

func newExternalDelegate(path string) (*externalDelegate, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("external delegate: %w (GNLD_DELEGATE is \"cpu\", \"gpu\" or the path of a TFLite delegate .so)", err)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	d := C.gnl_external_delegate(cpath)
	if d == nil {
		return nil, fmt.Errorf("external delegate %s: TFLite could not load it (not a TFLite delegate library, or built for another TFLite version)", path)
	}
	return &externalDelegate{d: d}, nil
}

func (e *externalDelegate) Delete()             { C.TfLiteExternalDelegateDelete(e.d) }
func (e *externalDelegate) Ptr() unsafe.Pointer { return unsafe.Pointer(e.d) }
