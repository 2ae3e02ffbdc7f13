package capture

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gocv.io/x/gocv"
)

// Kind says what a source spec points at.
type Kind string

// The source kinds ParseSource knows.
const (
	KindV4L2   Kind = "v4l2"   // /dev/videoN or v4l2:N
	KindStream Kind = "stream" // rtsp://, rtsps://, http://, https://
	KindGst    Kind = "gst"    // gst:<GStreamer pipeline ending in appsink>
	KindFile   Kind = "file"   // a video file: file:PATH or a plain path
	KindDir    Kind = "dir"    // dir:PATH, a folder of images
	// genicam:<camera id>, a GigE Vision or USB3 Vision camera through
	// Aravis (genicam.go)
	KindGenicam Kind = "genicam"
)

// Spec is a parsed source spec.
type Spec struct {
	Kind   Kind
	Target string // device number, URL, pipeline, path or camera id
}

// Finite reports whether the source ends by itself (a file or a folder).
// Finite sources are not live cameras: by default every frame is handed on
// (none dropped) and the camera stops at the end unless it loops.
func (s Spec) Finite() bool { return s.Kind == KindFile || s.Kind == KindDir }

func (s Spec) String() string { return string(s.Kind) + ":" + s.Target }

// ParseSource parses a URL-like source spec:
//
//	/dev/video0, v4l2:0          a V4L2 device
//	rtsp://..., http(s)://...    a network stream (FFmpeg backend)
//	gst:videotestsrc ! appsink   a GStreamer pipeline
//	dir:/data/imgs               a folder of images, read in name order
//	file:/data/a.mkv, /data/a.mkv  a video file
//	genicam:Basler-40012345      a GigE Vision or USB3 Vision camera by its
//	                             Aravis id, user name, vendor-serial, MAC
//	                             or IP address
func ParseSource(spec string) (Spec, error) {
	switch {
	case spec == "":
		return Spec{}, errors.New("empty source")
	case strings.HasPrefix(spec, "v4l2:"):
		n, err := strconv.Atoi(strings.TrimPrefix(spec, "v4l2:"))
		if err != nil || n < 0 {
			return Spec{}, fmt.Errorf("source %q: expected v4l2:N with N a device number", spec)
		}
		return Spec{KindV4L2, strconv.Itoa(n)}, nil
	case strings.HasPrefix(spec, "/dev/video"):
		n, err := strconv.Atoi(strings.TrimPrefix(spec, "/dev/video"))
		if err != nil || n < 0 {
			return Spec{}, fmt.Errorf("source %q: expected /dev/videoN", spec)
		}
		return Spec{KindV4L2, strconv.Itoa(n)}, nil
	case hasAnyPrefix(spec, "rtsp://", "rtsps://", "http://", "https://"):
		return Spec{KindStream, spec}, nil
	case strings.HasPrefix(spec, "gst:"):
		p := strings.TrimSpace(strings.TrimPrefix(spec, "gst:"))
		if p == "" {
			return Spec{}, fmt.Errorf("source %q: expected gst:<pipeline>", spec)
		}
		return Spec{KindGst, p}, nil
	case strings.HasPrefix(spec, "dir:"):
		p := strings.TrimPrefix(spec, "dir:")
		if p == "" {
			return Spec{}, fmt.Errorf("source %q: expected dir:PATH", spec)
		}
		return Spec{KindDir, p}, nil
	case strings.HasPrefix(spec, "genicam:"):
		id := strings.TrimPrefix(spec, "genicam:")
		if err := validCameraID(id); err != nil {
			return Spec{}, fmt.Errorf("source %q: expected genicam:<camera id> (arv-tool-0.8 lists them): %w", spec, err)
		}
		return Spec{KindGenicam, id}, nil
	case strings.HasPrefix(spec, "file:"):
		p := strings.TrimPrefix(spec, "file:")
		if p == "" {
			return Spec{}, fmt.Errorf("source %q: expected file:PATH", spec)
		}
		return Spec{KindFile, p}, nil
	case strings.Contains(spec, "://"):
		return Spec{}, fmt.Errorf("source %q: unknown scheme (expected rtsp, rtsps, http or https)", spec)
	default:
		return Spec{KindFile, spec}, nil
	}
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// reader is one open connection to a source. Only the camera's reader
// goroutine uses it, from open to Close, so it need not be goroutine-safe.
// Read may block for as long as the C library likes; the camera's watchdog
// does not wait for it (see Camera).
type reader interface {
	// Read fills m with the next frame and returns the frame's file name
	// when known. It returns io.EOF at the end of a finite source. An empty
	// m with a nil error is a bad frame: counted, skipped, read goes on.
	Read(m *gocv.Mat) (file string, err error)
	Close() error
}

// open connects to the source. after is the last file a folder source
// handed on: the folder resumes after it instead of starting again. g is
// a genicam source's camera settings.
func open(s Spec, g Genicam, after string) (reader, error) {
	switch s.Kind {
	case KindGenicam:
		return openGenicam(s.Target, g)
	case KindDir:
		return openDir(s.Target, after)
	case KindV4L2:
		n, _ := strconv.Atoi(s.Target)
		return openVideo(n, gocv.VideoCaptureV4L2, "", false)
	case KindStream:
		return openVideo(s.Target, gocv.VideoCaptureFFmpeg, "", false)
	case KindGst:
		return openVideo(s.Target, gocv.VideoCaptureGstreamer, "", false)
	default: // KindFile
		if _, err := os.Stat(s.Target); err != nil {
			return nil, err // names the file and says why
		}
		return openVideo(s.Target, gocv.VideoCaptureAny, filepath.Base(s.Target), true)
	}
}

// videoReader reads a device, stream, pipeline or video file through
// OpenCV's VideoCapture.
type videoReader struct {
	vc     *gocv.VideoCapture
	file   string // base name of a video file, else ""
	finite bool   // a failed read is the end of a file, not a fault
}

func openVideo(target any, api gocv.VideoCaptureAPI, file string, finite bool) (*videoReader, error) {
	vc, err := gocv.OpenVideoCaptureWithAPI(target, api)
	if err == nil && !vc.IsOpened() {
		err = errors.New("not opened")
	}
	if err != nil {
		if vc != nil {
			vc.Close()
		}
		return nil, fmt.Errorf("open %v: %w", target, err)
	}
	return &videoReader{vc: vc, file: file, finite: finite}, nil
}

func (v *videoReader) Read(m *gocv.Mat) (string, error) {
	if v.vc.Read(m) {
		return v.file, nil
	}
	if v.finite {
		return v.file, io.EOF
	}
	return v.file, errors.New("read failed")
}

func (v *videoReader) Close() error { return v.vc.Close() }

// imageExts are the file types a folder source reads; other files are
// ignored.
var imageExts = []string{".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

// dirReader reads the images of a folder in name order, each once.
type dirReader struct {
	dir   string
	names []string
}

func openDir(dir, after string) (*dirReader, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && slices.Contains(imageExts, strings.ToLower(filepath.Ext(e.Name()))) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("folder %s: no images (%s)", dir, strings.Join(imageExts, " "))
	}
	// ReadDir sorts by name already.
	if after != "" {
		i, _ := slices.BinarySearch(names, after)
		for i < len(names) && names[i] <= after {
			i++
		}
		names = names[i:]
	}
	return &dirReader{dir: dir, names: names}, nil
}

func (d *dirReader) Read(m *gocv.Mat) (string, error) {
	if len(d.names) == 0 {
		return "", io.EOF
	}
	name := d.names[0]
	d.names = d.names[1:]
	img, _ := ReadImage(filepath.Join(d.dir, name), gocv.IMReadColor)
	m.Close()
	*m = img // empty if the file is gone, not an image or damaged: a bad frame, logged with its name
	return name, nil
}

func (d *dirReader) Close() error { return nil }
