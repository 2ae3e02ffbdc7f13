package runtime

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// The few OpenCL 1.2 types and constants the probe needs (CL/cl.h), so
// that gnld builds without OpenCL headers.
typedef int32_t cl_int;
typedef uint32_t cl_uint;
typedef uint64_t cl_device_type;
typedef struct _cl_platform_id* cl_platform_id;
typedef struct _cl_device_id* cl_device_id;
#define GNL_CL_DEVICE_TYPE_GPU (1 << 2)
#define GNL_CL_DEVICE_TYPE_ALL 0xFFFFFFFF
#define GNL_CL_PLATFORM_NAME 0x0902

typedef cl_int (*gnl_get_platforms)(cl_uint, cl_platform_id*, cl_uint*);
typedef cl_int (*gnl_get_devices)(cl_platform_id, cl_device_type, cl_uint, cl_device_id*, cl_uint*);
typedef cl_int (*gnl_get_platform_info)(cl_platform_id, cl_uint, size_t, void*, size_t*);

// gnl_opencl_probe asks OpenCL what TFLite's GPU delegate will ask it: a
// GPU device on the first platform (cl_device.cc, CreateDefaultGPUDevice).
// It writes the reason into why and returns 0 when there is none.
static int gnl_opencl_probe(char* why, size_t n) {
	void* lib = dlopen("libOpenCL.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!lib) lib = dlopen("libOpenCL.so", RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		snprintf(why, n, "no OpenCL library (%s): install the GPU's OpenCL driver and an OpenCL ICD loader", dlerror());
		return 0;
	}
	gnl_get_platforms platforms = (gnl_get_platforms)dlsym(lib, "clGetPlatformIDs");
	gnl_get_devices devices = (gnl_get_devices)dlsym(lib, "clGetDeviceIDs");
	gnl_get_platform_info info = (gnl_get_platform_info)dlsym(lib, "clGetPlatformInfo");
	int ok = 0;
	cl_uint np = 0, nd = 0, nall = 0;
	cl_platform_id p[1];
	char name[128] = "?";
	if (!platforms || !devices || !info) {
		snprintf(why, n, "the OpenCL library lacks clGetPlatformIDs/clGetDeviceIDs");
	} else if (platforms(1, p, &np) != 0 || np == 0) {
		snprintf(why, n, "OpenCL finds no platform: no OpenCL driver is installed or none loads (see /etc/OpenCL/vendors, OCL_ICD_VENDORS)");
	} else {
		info(p[0], GNL_CL_PLATFORM_NAME, sizeof name - 1, name, NULL);
		if (devices(p[0], GNL_CL_DEVICE_TYPE_GPU, 0, NULL, &nd) != 0 || nd == 0) {
			devices(p[0], GNL_CL_DEVICE_TYPE_ALL, 0, NULL, &nall);
			snprintf(why, n, "the first OpenCL platform (%s) has no GPU device (%u other devices); TFLite's GPU delegate uses the first platform's GPUs only", name, nall);
		} else {
			ok = 1;
		}
	}
	dlclose(lib);
	return ok;
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// openCLGPU says whether OpenCL offers TFLite's GPU delegate a GPU, and if
// not, why, so that the fallback warning names the cause.
func openCLGPU() error {
	var why [512]C.char
	if C.gnl_opencl_probe(&why[0], C.size_t(len(why))) != 0 {
		return nil
	}
	return errors.New("no usable OpenCL GPU: " + C.GoString((*C.char)(unsafe.Pointer(&why[0]))))
}
