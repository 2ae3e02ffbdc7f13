package runtime

/*
#cgo LDFLAGS: -ltensorflowlite_c
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <tensorflow/lite/c/c_api.h>

// A bounded C buffer that collects TFLite's error messages, so that Go can
// put them into its errors instead of leaving them on stderr.
typedef struct { char buf[2048]; size_t n; } gnl_errlog;

static void gnl_report(void* user, const char* format, va_list args) {
	gnl_errlog* l = user;
	size_t room = sizeof l->buf - l->n;
	if (room < 2) return;
	int k = vsnprintf(l->buf + l->n, room - 1, format, args);
	if (k < 0) return;
	l->n += (size_t)k < room - 2 ? (size_t)k : room - 2;
	l->buf[l->n++] = '\n';
	l->buf[l->n] = 0;
}

static void gnl_set_reporter(TfLiteInterpreterOptions* o, gnl_errlog* l) {
	TfLiteInterpreterOptionsSetErrorReporter(o, gnl_report, l);
}
*/
import "C"

import (
	"unsafe"

	tflite "github.com/mattn/go-tflite"
)

// errorLog holds TFLite's error messages for one interpreter. go-tflite's
// own SetErrorReporter formats with asprintf instead of vasprintf (v1.0.5),
// so it garbles messages; this one formats them correctly in C.
type errorLog struct{ l *C.gnl_errlog }

// newErrorLog installs a reporter on o. It reads the C options pointer that
// go-tflite keeps as the first and only field of InterpreterOptions
// (v1.0.5, pinned in go.mod); TestErrorMessages fails if that changes.
func newErrorLog(o *tflite.InterpreterOptions) *errorLog {
	l := (*C.gnl_errlog)(C.calloc(1, C.sizeof_gnl_errlog))
	copts := *(**C.TfLiteInterpreterOptions)(unsafe.Pointer(o))
	C.gnl_set_reporter(copts, l)
	return &errorLog{l: l}
}

// take returns the messages so far, on one line, and clears the log.
func (e *errorLog) take() string {
	s := C.GoString(&e.l.buf[0])
	e.l.n, e.l.buf[0] = 0, 0
	return oneLine(s)
}

func (e *errorLog) free() {
	C.free(unsafe.Pointer(e.l))
	e.l = nil
}
