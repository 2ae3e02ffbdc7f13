package runtime

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <tensorflow/lite/c/common.h>

typedef TfLiteDelegate* (*gnl_create_fn)(char**, char**, size_t, void (*)(const char*));
typedef void (*gnl_destroy_fn)(TfLiteDelegate*);

typedef struct {
	void* lib;
	TfLiteDelegate* delegate;
	gnl_destroy_fn destroy;
} gnl_external;

// gnl_external_load opens a TFLite delegate plugin (the same entry points
// TFLite's external delegate uses) and creates its delegate with no options.
// On failure it returns a static message and leaves e zeroed.
static const char* gnl_external_load(const char* path, gnl_external* e) {
	e->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!e->lib) return dlerror();
	gnl_create_fn create = (gnl_create_fn)dlsym(e->lib, "tflite_plugin_create_delegate");
	e->destroy = (gnl_destroy_fn)dlsym(e->lib, "tflite_plugin_destroy_delegate");
	if (!create || !e->destroy) {
		dlclose(e->lib);
		e->lib = NULL;
		return "not a TFLite delegate plugin (no tflite_plugin_create_delegate / tflite_plugin_destroy_delegate)";
	}
	e->delegate = create(NULL, NULL, 0, NULL);
	if (!e->delegate) {
		dlclose(e->lib);
		e->lib = NULL;
		return "the plugin could not create its delegate (no device?)";
	}
	return NULL;
}

static void gnl_external_free(gnl_external* e) {
	if (e->delegate) e->destroy(e->delegate);
	if (e->lib) dlclose(e->lib);
	e->delegate = NULL;
	e->lib = NULL;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// externalDelegate is a delegate from a shared library that exports TFLite's
// delegate plugin entry points (tflite_plugin_create_delegate and
// tflite_plugin_destroy_delegate), as TFLite's external delegate loads them.
// gnld loads the plugin itself: go-tflite's delegates/external links a
// library Debian does not ship, and TFLite 2.14's TfLiteExternalDelegateCreate
// returns an unusable delegate, not NULL, when the library fails to load.
type externalDelegate struct{ e *C.gnl_external }

func newExternalDelegate(path string) (*externalDelegate, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	e := (*C.gnl_external)(C.calloc(1, C.sizeof_gnl_external))
	if msg := C.gnl_external_load(cpath, e); msg != nil {
		C.free(unsafe.Pointer(e))
		return nil, fmt.Errorf("external delegate %s: %s (a delegate setting is xnnpack, builtin, gpu or the path of a TFLite delegate plugin .so)", path, C.GoString(msg))
	}
	return &externalDelegate{e: e}, nil
}

// Delete destroys the delegate and unloads its library; call it after the
// interpreter that uses it is deleted.
func (d *externalDelegate) Delete() {
	C.gnl_external_free(d.e)
	C.free(unsafe.Pointer(d.e))
}

// Ptr is the TfLiteDelegate*, for go-tflite's InterpreterOptions.AddDelegate.
func (d *externalDelegate) Ptr() unsafe.Pointer { return unsafe.Pointer(d.e.delegate) }
