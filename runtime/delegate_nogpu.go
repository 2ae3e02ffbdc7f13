//go:build !gpu

package runtime

import (
	"errors"

	"github.com/mattn/go-tflite/delegates"
)

// newDelegate makes the delegate named by Options.Delegate ("gpu" or a path).
// The default build has no GPU delegate, so it needs no GPU library.
func newDelegate(name string) (delegates.Delegater, error) {
	if name != "gpu" {
		return newExternalDelegate(name)
	}
	return nil, errors.New("this gnld was built without GPU support; rebuild with `go build -tags gpu` against libtensorflowlite_c_delegate_gpu")
}
