package capture

// Trigger mode for genicam sources, through libaravis directly: gnld sets
// the camera to TriggerMode=On, TriggerSource=Software, starts the
// acquisition and, for each trigger, executes TriggerSoftware and waits for
// the one frame it gives. aravissrc cannot do this: OpenCV's VideoCapture
// hides the element, and aravissrc ends the stream after 2 s without a
// frame, which in trigger mode is the normal wait for the next part.

/*
#cgo pkg-config: gobject-2.0 gio-2.0
#cgo CFLAGS: -I/usr/include/aravis-0.8
#cgo LDFLAGS: -laravis-0.8
#include <arv.h>
#include <stdlib.h>
#include <string.h>

// gnl_err moves a GError's message into *err (freed by the caller).
static void gnl_err(GError *e, const char *what, char **err) {
	*err = g_strdup_printf("%s: %s", what, e != NULL ? e->message : "failed");
	if (e != NULL) g_error_free(e);
}

typedef struct {
	ArvCamera *cam;
	ArvStream *stream;
	gint lost; // set by the device's control-lost signal
} gnl_arv;

static void gnl_on_lost(ArvDevice *dev, gpointer p) { g_atomic_int_set(&((gnl_arv *) p)->lost, 1); }

static void gnl_close(gnl_arv *a) {
	if (a == NULL) return;
	if (a->cam != NULL) {
		if (a->stream != NULL) arv_camera_stop_acquisition(a->cam, NULL);
		ArvDevice *dev = arv_camera_get_device(a->cam);
		if (dev != NULL) g_signal_handlers_disconnect_by_data(dev, a);
	}
	if (a->stream != NULL) g_object_unref(a->stream);
	if (a->cam != NULL) g_object_unref(a->cam);
	g_free(a);
}

// gnl_open opens camera id, writes the settings (pixfmt NULL, exposure 0,
// set_gain 0, rate 0: the camera's), switches it to software trigger and
// starts the acquisition with nbuf buffers. On failure it returns NULL and
// says why in *err.
static gnl_arv *gnl_open(const char *id, const char *pixfmt, double exposure, int set_gain, double gain,
		double rate, int nbuf, char **err) {
	GError *e = NULL;
	gnl_arv *a = g_new0(gnl_arv, 1);
	a->cam = arv_camera_new(id, &e);
	if (a->cam == NULL) { gnl_err(e, "open", err); gnl_close(a); return NULL; }
	g_signal_connect(arv_camera_get_device(a->cam), "control-lost", G_CALLBACK(gnl_on_lost), a);
	if (pixfmt != NULL) {
		arv_camera_set_pixel_format_from_string(a->cam, pixfmt, &e);
		if (e != NULL) { gnl_err(e, "PixelFormat", err); gnl_close(a); return NULL; }
	}
	if (exposure > 0) {
		if (arv_camera_is_exposure_auto_available(a->cam, NULL))
			arv_camera_set_exposure_time_auto(a->cam, ARV_AUTO_OFF, NULL);
		arv_camera_set_exposure_time(a->cam, exposure, &e);
		if (e != NULL) { gnl_err(e, "ExposureTime", err); gnl_close(a); return NULL; }
	}
	if (set_gain) {
		if (arv_camera_is_gain_auto_available(a->cam, NULL))
			arv_camera_set_gain_auto(a->cam, ARV_AUTO_OFF, NULL);
		arv_camera_set_gain(a->cam, gain, &e);
		if (e != NULL) { gnl_err(e, "Gain", err); gnl_close(a); return NULL; }
	}
	// Before the trigger: Aravis turns the trigger off to set a frame rate.
	if (rate > 0) {
		arv_camera_set_frame_rate(a->cam, rate, &e);
		if (e != NULL) { gnl_err(e, "AcquisitionFrameRate", err); gnl_close(a); return NULL; }
	}
	arv_camera_set_acquisition_mode(a->cam, ARV_ACQUISITION_MODE_CONTINUOUS, &e);
	if (e != NULL) { gnl_err(e, "AcquisitionMode", err); gnl_close(a); return NULL; }
	// TriggerSelector=FrameStart, TriggerMode=On, TriggerSource=Software
	// (and every other trigger off).
	arv_camera_set_trigger(a->cam, "Software", &e);
	if (e != NULL) { gnl_err(e, "software trigger (TriggerMode, TriggerSource)", err); gnl_close(a); return NULL; }
	if (!arv_camera_is_software_trigger_supported(a->cam, NULL)) {
		*err = g_strdup("the camera has no TriggerSoftware command");
		gnl_close(a);
		return NULL;
	}
	a->stream = arv_camera_create_stream(a->cam, NULL, NULL, &e);
	if (a->stream == NULL) { gnl_err(e, "stream", err); gnl_close(a); return NULL; }
	guint payload = arv_camera_get_payload(a->cam, &e);
	if (e != NULL) { gnl_err(e, "PayloadSize", err); gnl_close(a); return NULL; }
	for (int i = 0; i < nbuf; i++) arv_stream_push_buffer(a->stream, arv_buffer_new(payload, NULL));
	arv_camera_start_acquisition(a->cam, &e);
	if (e != NULL) { gnl_err(e, "AcquisitionStart", err); gnl_close(a); return NULL; }
	return a;
}

// gnl_fire discards the frames the camera sent without a trigger (their
// count in *stray), executes TriggerSoftware and waits up to timeout_us
// for the frame. It returns the buffer (give it back with gnl_give), or
// NULL and says why in *err.
static ArvBuffer *gnl_fire(gnl_arv *a, guint64 timeout_us, int *stray, char **err) {
	GError *e = NULL;
	ArvBuffer *b;
	*stray = 0;
	while ((b = arv_stream_try_pop_buffer(a->stream)) != NULL) {
		arv_stream_push_buffer(a->stream, b);
		(*stray)++;
	}
	arv_camera_software_trigger(a->cam, &e);
	if (e != NULL) { gnl_err(e, "TriggerSoftware", err); return NULL; }
	b = arv_stream_timeout_pop_buffer(a->stream, timeout_us);
	if (b == NULL) *err = g_strdup("no frame after TriggerSoftware");
	return b;
}

static void gnl_give(gnl_arv *a, ArvBuffer *b) { arv_stream_push_buffer(a->stream, b); }

// gnl_alive reads a bootstrap register: 0 and *err when the camera does
// not answer or its control was lost.
static int gnl_alive(gnl_arv *a, char **err) {
	GError *e = NULL;
	guint32 v;
	if (g_atomic_int_get(&a->lost)) { *err = g_strdup("control of the camera lost (no heartbeat answer)"); return 0; }
	if (!arv_device_read_register(arv_camera_get_device(a->cam), 0, &v, &e)) { gnl_err(e, "register read", err); return 0; }
	return 1;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"gocv.io/x/gocv"
)

// triggerReader is a connection that gives frames only when told to:
// Fire triggers the camera and reads the one frame it gives (an empty m
// and a nil error: a bad frame); Alive checks the connection while it
// waits for the next trigger.
type triggerReader interface {
	Fire(m *gocv.Mat) error
	Alive() error
	Strays() uint64 // frames the camera sent without a trigger, discarded
	Close() error
}

// aravisReader is a genicam camera in software trigger mode.
type aravisReader struct {
	id      string
	a       *C.gnl_arv
	timeout time.Duration
	strays  uint64 // frames the camera sent without a trigger, discarded
}

// aravisBuffers: frames a software-triggered camera can have in flight.
const aravisBuffers = 4

// openAravis opens camera id in software trigger mode with settings g;
// timeout bounds the wait for a triggered frame.
func openAravis(id string, g Genicam, pf *pixelFormat, timeout time.Duration) (*aravisReader, error) {
	cid := C.CString(id)
	defer C.free(unsafe.Pointer(cid))
	var cpf *C.char // nil: the camera's, which toBGR checks frame by frame
	if pf != nil && g.PixelFormat != "" {
		cpf = C.CString(g.PixelFormat)
		defer C.free(unsafe.Pointer(cpf))
	}
	var setGain C.int
	if g.GainDB != nil {
		setGain = 1
	}
	var cerr *C.char
	a := C.gnl_open(cid, cpf, C.double(g.ExposureUS), setGain, C.double(deref(g.GainDB)), C.double(g.FrameRate), aravisBuffers, &cerr)
	if a == nil {
		return nil, fmt.Errorf("camera %q (software trigger): %s", id, takeCErr(cerr))
	}
	return &aravisReader{id: id, a: a, timeout: timeout}, nil
}

func takeCErr(s *C.char) string {
	if s == nil {
		return "failed"
	}
	defer C.g_free(C.gpointer(unsafe.Pointer(s)))
	return C.GoString(s)
}

func (r *aravisReader) Fire(m *gocv.Mat) error {
	var cerr *C.char
	var stray C.int
	b := C.gnl_fire(r.a, C.guint64(r.timeout/time.Microsecond), &stray, &cerr)
	r.strays += uint64(stray)
	if b == nil {
		return fmt.Errorf("camera %q: %s within %s", r.id, takeCErr(cerr), r.timeout)
	}
	defer C.gnl_give(r.a, b)
	if C.arv_buffer_get_status(b) != C.ARV_BUFFER_STATUS_SUCCESS {
		m.Close()
		*m = gocv.NewMat() // a bad frame: incomplete or damaged in transit
		return nil
	}
	var size C.size_t
	data := C.arv_buffer_get_data(b, &size)
	w, h := int(C.arv_buffer_get_image_width(b)), int(C.arv_buffer_get_image_height(b))
	pfnc := uint32(C.arv_buffer_get_image_pixel_format(b))
	bgr, err := toBGR(unsafe.Slice((*byte)(data), int(size)), w, h, pfnc)
	if err != nil {
		return fmt.Errorf("camera %q: %w", r.id, err)
	}
	m.Close()
	*m = bgr
	return nil
}

func (r *aravisReader) Strays() uint64 { return r.strays }

func (r *aravisReader) Alive() error {
	var cerr *C.char
	if C.gnl_alive(r.a, &cerr) == 0 {
		return fmt.Errorf("camera %q: %s", r.id, takeCErr(cerr))
	}
	return nil
}

func (r *aravisReader) Close() error {
	C.gnl_close(r.a)
	r.a = nil
	return nil
}

// toBGR converts a frame of pixel format pfnc (its PFNC code) into a new
// 8-bit BGR Mat. data may be C memory: the Mat returned never refers to it.
func toBGR(data []byte, w, h int, pfnc uint32) (gocv.Mat, error) {
	var pf *pixelFormat
	for i := range pixelFormats {
		if pixelFormats[i].pfnc == pfnc {
			pf = &pixelFormats[i]
		}
	}
	if pf == nil {
		return gocv.Mat{}, fmt.Errorf("frame of pixel format 0x%08x, not one gnld reads (%v)", pfnc, PixelFormats())
	}
	typ, bpp := gocv.MatTypeCV8UC1, 1
	switch pf.names[0] {
	case "Mono16":
		typ, bpp = gocv.MatTypeCV16UC1, 2
	case "RGB8":
		typ, bpp = gocv.MatTypeCV8UC3, 3
	case "YUV422_8_UYVY", "YUV422_8":
		typ, bpp = gocv.MatTypeCV8UC2, 2
	}
	if w <= 0 || h <= 0 || len(data) < w*h*bpp {
		return gocv.Mat{}, fmt.Errorf("frame of %d bytes for %dx%d %s", len(data), w, h, pf.names[0])
	}
	raw, err := gocv.NewMatFromBytes(h, w, typ, data[:w*h*bpp])
	if err != nil {
		return gocv.Mat{}, err
	}
	defer raw.Close()
	out := gocv.NewMat()
	switch pf.names[0] {
	case "Mono8":
		gocv.CvtColor(raw, &out, gocv.ColorGrayToBGR)
	case "Mono16":
		m8 := gocv.NewMat()
		raw.ConvertToWithParams(&m8, gocv.MatTypeCV8UC1, 1.0/256, 0)
		gocv.CvtColor(m8, &out, gocv.ColorGrayToBGR)
		m8.Close()
	case "RGB8":
		gocv.CvtColor(raw, &out, gocv.ColorRGBToBGR)
	case "YUV422_8_UYVY":
		gocv.CvtColor(raw, &out, gocv.ColorYUVToBGRUYVY)
	case "YUV422_8":
		gocv.CvtColor(raw, &out, gocv.ColorYUVToBGRYUY2)
	default: // Bayer
		gocv.CvtColor(raw, &out, pf.demosaic)
	}
	if out.Empty() {
		out.Close()
		return gocv.Mat{}, errors.New("frame conversion to BGR failed")
	}
	return out, nil
}
