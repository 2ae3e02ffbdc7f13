package runtime

import (
	"fmt"
	"os"

	tflite "github.com/mattn/go-tflite"
	"golang.org/x/sys/unix"
)

// newModel makes a TFLite model of data, a model file's bytes read once.
//
// TFLite's file loader maps the file and reads the weights from that
// mapping for as long as the model lives. A bundle copied over the one in
// service (the file overwritten in place) would then change the model
// under the running interpreter, or end the process with SIGBUS once the
// file got shorter. So the bytes go into an anonymous memory file
// (memfd), sealed so that nothing can change it any more, and TFLite maps
// that: the model in service is the bytes that were checked, and its
// memory is freed with it. It returns nil when TFLite does not take the
// bytes as a model.
func newModel(data []byte) (*tflite.Model, error) {
	fd, err := unix.MemfdCreate("gnld-model", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "gnld-model")
	defer f.Close() // TFLite opens its own descriptor and keeps the mapping
	if _, err := f.Write(data); err != nil {
		return nil, fmt.Errorf("model copy: %w", err)
	}
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return nil, fmt.Errorf("model copy: seal: %w", err)
	}
	return tflite.NewModelFromFile(fmt.Sprintf("/proc/self/fd/%d", fd)), nil
}
