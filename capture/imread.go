package capture

/*
#cgo pkg-config: opencv4
#cgo CXXFLAGS: -std=c++17
#include <stdlib.h>
#include "imread.h"
*/
import "C"

import (
	"fmt"
	"strings"
	"unsafe"

	"gocv.io/x/gocv"
)

// ReadImage is gocv.IMRead that survives any file; gnld's folder sources
// and gnlctl read images with it. OpenCV 4.10's cv::imread checks an
// image's size from its header outside its own try block: a 64-byte BMP
// whose header says 23 million rows makes it throw cv::Exception
// ("Assertion failed ... validateInputImageSize"), as does a header whose
// pixels cannot be allocated. gocv's C wrapper does not catch it, so the
// C++ runtime aborts the whole process (found by FuzzDirImage).
// ReadImage catches every exception. When the file cannot be decoded it
// returns an empty Mat (which the caller must still Close) and an error
// naming the file and, if OpenCV threw, OpenCV's reason.
func ReadImage(path string, flags gocv.IMReadFlag) (gocv.Mat, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var reason [512]C.char
	m := gocv.NewMatFromCMat(C.gnl_imread(cpath, C.int(flags), &reason[0], C.int(len(reason))))
	if !m.Empty() {
		return m, nil
	}
	why := "missing, unreadable, damaged or not an image"
	if r := C.GoString(&reason[0]); r != "" {
		why = "OpenCV: " + strings.Join(strings.Fields(r), " ") // one line
	}
	return m, fmt.Errorf("%s: cannot read image (%s)", path, why)
}
