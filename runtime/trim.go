package runtime

/*
#include <malloc.h>
*/
import "C"

// trimHeap gives the memory C code has freed back to the system. An
// interpreter's tensors and XNNPACK's packed weights are tens of MB of
// glibc heap; freed at a model reload, glibc keeps most of them in its
// arenas, and RSS grew by about 25 MB per reload in the soak
// (docs/SOAK.md). Closing an interpreter is rare, so the walk over the
// heap that malloc_trim does costs nothing that matters.
func trimHeap() { C.malloc_trim(0) }
