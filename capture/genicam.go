package capture

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gocv.io/x/gocv"
)

// GigE Vision and USB3 Vision cameras (genicam:<camera id>) are read
// through Aravis's GStreamer element, aravissrc, in a pipeline gnld
// builds and OpenCV's GStreamer backend runs, like a gst: source:
//
//	aravissrc camera-name="<id>" [exposure=<µs>] [gain=<dB>]
//	  ! <caps of the pixel format>[,framerate=<rate>]
//	  [! videoconvert ! video/x-raw,format=BGR] ! appsink
//
// aravissrc writes the pixel format and frame rate the caps name, and the
// exposure and gain (turning auto exposure and auto gain off). Bayer
// formats reach gnld raw and OpenCV demosaics them (GStreamer's bayer2rgb
// is in plugins-bad).
//
// Before each connection gnld asks (discoverGigE) whether the camera
// answers, and, with arv-tool-0.8 (aravis-tools-cli) installed, reads the
// bounds the camera gives for each setting: a missing camera or a setting
// the camera does not take fails in milliseconds with an error that names
// it, instead of a pipeline that does not start and a GStreamer warning on
// stderr. Aravis itself does not check bounds (its range check is off by
// default), so without arv-tool a camera that takes an out-of-range value
// silently is not caught.

// Genicam holds a genicam source's camera settings. The zero value leaves
// every setting as the camera has it.
type Genicam struct {
	// PixelFormat is a GenICam name from PixelFormats; "": the camera's
	// current one (with arv-tool; without it, whichever GStreamer
	// negotiates).
	PixelFormat string
	ExposureUS  float64  // exposure time in µs; 0: the camera's
	GainDB      *float64 // gain in dB; nil: the camera's
	FrameRate   float64  // acquisition frame rate in Hz; 0: the camera's
}

// IsZero reports whether g sets nothing.
func (g Genicam) IsZero() bool {
	return g.PixelFormat == "" && g.ExposureUS == 0 && g.GainDB == nil && g.FrameRate == 0
}

// check reports the first setting outside what gnld can send to aravissrc.
func (g Genicam) check() error {
	switch {
	case g.PixelFormat != "" && pixelFormatNamed(g.PixelFormat) == nil:
		return fmt.Errorf("pixel format %q: expected one of %s", g.PixelFormat, strings.Join(PixelFormats(), ", "))
	case !(g.ExposureUS >= 0) || g.ExposureUS > 1e8: // aravissrc's bounds; NaN too
		return fmt.Errorf("exposure %g µs: expected 0 (the camera's) or up to 1e8", g.ExposureUS)
	case g.GainDB != nil && (!(*g.GainDB >= 0) || *g.GainDB > 500):
		return fmt.Errorf("gain %g dB: expected 0 to 500", *g.GainDB)
	case !(g.FrameRate >= 0) || g.FrameRate > 1e6:
		return fmt.Errorf("frame rate %g: expected 0 (the camera's) or up to 1e6", g.FrameRate)
	}
	return nil
}

// pixelFormat is a camera pixel format gnld reads.
type pixelFormat struct {
	names []string // the GenICam (SFNC) name, then older names cameras use
	caps  string   // what aravissrc gives for it (Aravis arvmisc.c)
	// demosaic: OpenCV's conversion of the raw Bayer frame to BGR; 0:
	// GStreamer's videoconvert converts the frame.
	demosaic gocv.ColorConversionCode
	pfnc     uint32 // the PFNC code, as libaravis gives it (trigger mode)
}

// pixelFormats: 8-bit formats and Mono16. Mono10/12/14 are left out:
// aravissrc gives them all as GRAY16_LE and, asked for GRAY16_LE, sets
// Mono16. OpenCV names Bayer patterns by the second row
// (COLOR_BayerBG2BGR is RGGB).
var pixelFormats = []pixelFormat{
	{names: []string{"Mono8"}, caps: "video/x-raw,format=GRAY8", pfnc: 0x01080001},
	{names: []string{"Mono16"}, caps: "video/x-raw,format=GRAY16_LE", pfnc: 0x01100007},
	{names: []string{"RGB8", "RGB8Packed"}, caps: "video/x-raw,format=RGB", pfnc: 0x02180014},
	{names: []string{"YUV422_8_UYVY", "YUV422Packed"}, caps: "video/x-raw,format=UYVY", pfnc: 0x0210001f},
	{names: []string{"YUV422_8", "YUV422_YUYV_Packed"}, caps: "video/x-raw,format=YUY2", pfnc: 0x02100032},
	{names: []string{"BayerRG8"}, caps: "video/x-bayer,format=rggb", demosaic: gocv.ColorBayerBGToBGR, pfnc: 0x01080009},
	{names: []string{"BayerGR8"}, caps: "video/x-bayer,format=grbg", demosaic: gocv.ColorBayerGBToBGR, pfnc: 0x01080008},
	{names: []string{"BayerGB8"}, caps: "video/x-bayer,format=gbrg", demosaic: gocv.ColorBayerGRToBGR, pfnc: 0x0108000a},
	{names: []string{"BayerBG8"}, caps: "video/x-bayer,format=bggr", demosaic: gocv.ColorBayerRGToBGR, pfnc: 0x0108000b},
}

// PixelFormats lists the GenICam pixel formats a genicam source reads.
func PixelFormats() []string {
	var out []string
	for _, p := range pixelFormats {
		out = append(out, p.names[0])
	}
	return out
}

// pixelFormatNamed returns the format one of whose names is name, or nil.
func pixelFormatNamed(name string) *pixelFormat {
	for i, p := range pixelFormats {
		if slices.Contains(p.names, name) {
			return &pixelFormats[i]
		}
	}
	return nil
}

// validCameraID: an id goes into the pipeline between double quotes, and
// arv-tool takes *, ? and | for a pattern.
func validCameraID(id string) error {
	if i := strings.IndexFunc(id, func(r rune) bool {
		return r < 0x20 || r == 0x7f || strings.ContainsRune(`"\*?|!`, r)
	}); i >= 0 {
		return fmt.Errorf("camera id %q: character %q not allowed", id, id[i])
	}
	if strings.TrimSpace(id) == "" {
		return errors.New("empty camera id")
	}
	return nil
}

// genicamPipeline is the GStreamer pipeline for camera id with settings
// g, reading pixel format pf (nil: let GStreamer negotiate one
// videoconvert takes).
func genicamPipeline(id string, g Genicam, pf *pixelFormat) string {
	num := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	var b strings.Builder
	fmt.Fprintf(&b, `aravissrc camera-name="%s"`, id)
	if g.ExposureUS > 0 {
		b.WriteString(" exposure=" + num(g.ExposureUS))
	}
	if g.GainDB != nil {
		b.WriteString(" gain=" + num(*g.GainDB))
	}
	caps := "video/x-raw"
	if pf != nil {
		caps = pf.caps
	}
	if g.FrameRate > 0 {
		n, d := fraction(g.FrameRate)
		caps += fmt.Sprintf(",framerate=%d/%d", n, d)
	}
	if pf != nil || g.FrameRate > 0 {
		b.WriteString(" ! " + caps)
	}
	if pf == nil || pf.demosaic == 0 {
		b.WriteString(" ! videoconvert ! video/x-raw,format=BGR")
	}
	// Keep only the newest frame: a live camera's frames are never queued.
	b.WriteString(" ! appsink max-buffers=1 drop=true sync=false")
	return b.String()
}

// fraction writes a frame rate as GStreamer's N/D, to a thousandth.
func fraction(v float64) (int64, int64) {
	n, d := int64(math.Round(v*1000)), int64(1000)
	for a, b := n, d; ; {
		if b == 0 {
			if a > 1 {
				n, d = n/a, d/a
			}
			return n, d
		}
		a, b = b, a%b
	}
}

// RefusedError is a setting the camera does not take. Camera.Run counts
// each connection that fails with one (Stats.Refused) and retries it
// like any failed connection: the camera may be swapped or reconfigured.
type RefusedError struct {
	Camera  string // the camera id
	Setting string // the gnld variable's suffix: PIXEL_FORMAT, EXPOSURE_US, GAIN_DB, FRAME_RATE
	Value   string // "": unset
	Why     string // what the camera takes
}

func (e *RefusedError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("camera %q: GNLD_CAMERA_<NAME>_%s is unset and %s", e.Camera, e.Setting, e.Why)
	}
	return fmt.Sprintf("camera %q refuses %s=%s (GNLD_CAMERA_<NAME>_%s): %s", e.Camera, e.Setting, e.Value, e.Setting, e.Why)
}

// arvTool is Aravis's command-line tool (Debian aravis-tools-cli). gnld
// only reads features with it, before it opens the pipeline.
var arvTool = "arv-tool-0.8"

// discoveryWait bounds the discovery that looks for a camera before each
// connection: GigE Vision cameras answer in milliseconds. It is also how
// long a connection attempt to a camera that is away takes (none at all
// for an address on a network that says so, as loopback does).
var discoveryWait = 500 * time.Millisecond

// openGenicam finds camera id, checks g against the camera's bounds and
// opens the pipeline.
func openGenicam(id string, g Genicam) (reader, error) {
	pf, onGigE, err := findGenicam(id, g)
	if err != nil {
		return nil, err
	}
	pipeline := genicamPipeline(id, g, pf)
	v, err := openVideo(pipeline, gocv.VideoCaptureGstreamer, "", false)
	if err != nil {
		where := "it answers discovery"
		if !onGigE {
			where = "no GigE Vision camera answers to it, a USB3 Vision camera is attached"
		}
		return nil, fmt.Errorf("camera %q: %s, but the pipeline did not start (OpenCV's GStreamer warning on stderr says why: another program holds the camera, the camera refused a setting, or GStreamer lacks aravissrc, Debian libaravis-0.8-0): %s",
			id, where, pipeline)
	}
	r := &genicamReader{videoReader: v}
	if pf != nil {
		r.demosaic = pf.demosaic
	}
	return r, nil
}

// findGenicam finds camera id (discovery) and checks g against the
// camera's bounds. It returns the pixel format to ask for (nil: the
// camera's, unknown without arv-tool) and whether the camera answered
// GigE Vision discovery.
func findGenicam(id string, g Genicam) (pf *pixelFormat, onGigE bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seen, derr := discoverGigE(ctx, id, discoveryWait)
	onGigE = slices.ContainsFunc(seen, func(c gigeCamera) bool { return c.Matches(id) })
	if !onGigE && !usb3VisionAttached() {
		return nil, false, notFound(id, seen, derr)
	}
	pf, err = checkGenicam(ctx, id, g)
	return pf, onGigE, err
}

// openGenicamTriggered finds camera id like openGenicam and opens it in
// software trigger mode through libaravis (aravis.go); wait bounds the
// wait for each triggered frame.
func openGenicamTriggered(id string, g Genicam, wait time.Duration) (triggerReader, error) {
	pf, _, err := findGenicam(id, g)
	if err != nil {
		return nil, err
	}
	return openAravis(id, g, pf, wait)
}

// notFound is the error for a camera that did not answer discovery.
func notFound(id string, seen []gigeCamera, derr error) error {
	var names []string
	for _, c := range seen {
		names = append(names, c.String())
	}
	answered := "no GigE Vision camera answered"
	if len(names) > 0 {
		answered = "GigE Vision cameras that answered: " + strings.Join(names, ", ")
	}
	if derr != nil {
		answered = derr.Error()
	}
	return fmt.Errorf("camera %q: %w: no GigE Vision camera answers discovery with that id, user name, vendor-serial, MAC or address within %s, and no USB3 Vision camera is attached (%s; arv-tool-0.8 lists the cameras Aravis sees)",
		id, errNotFound, discoveryWait, answered)
}

// genicamReader is a videoReader that demosaics Bayer frames.
type genicamReader struct {
	*videoReader
	demosaic gocv.ColorConversionCode
	pfnc     uint32 // the PFNC code, as libaravis gives it (trigger mode)
}

func (r *genicamReader) Read(m *gocv.Mat) (string, error) {
	if _, err := r.videoReader.Read(m); err != nil {
		// aravissrc gives up after 2 s without a complete frame.
		return "", errors.New("no frame from the camera (it went away, or the link dropped frames for 2 s)")
	}
	if r.demosaic != 0 && !m.Empty() && m.Channels() == 1 {
		bgr := gocv.NewMat()
		gocv.CvtColor(*m, &bgr, r.demosaic)
		m.Close()
		*m = bgr
	}
	return "", nil
}

// arvFeature is one feature arv-tool read.
type arvFeature struct {
	value    string
	min, max float64
	bounded  bool
}

var arvControlLine = regexp.MustCompile(`^(\w+) = (.*?)(?: min:(\S+) max:(\S+))?$`)

// parseArvControl reads `arv-tool control F1 F2 ...`: "F = V", "F = V
// min:A max:B", or "Feature 'F' not found" (left out).
func parseArvControl(out string) map[string]arvFeature {
	fs := map[string]arvFeature{}
	for line := range strings.Lines(out) {
		m := arvControlLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		f := arvFeature{value: m[2]}
		if m[3] != "" {
			lo, err1 := strconv.ParseFloat(m[3], 64)
			hi, err2 := strconv.ParseFloat(m[4], 64)
			f.min, f.max, f.bounded = lo, hi, err1 == nil && err2 == nil
		}
		fs[m[1]] = f
	}
	return fs
}

var arvEnumEntry = regexp.MustCompile(`EnumEntry\s*:\s*'([^']+)'`)

// parseArvEntries reads the entries of `arv-tool features PixelFormat`.
func parseArvEntries(out string) []string {
	var names []string
	for _, m := range arvEnumEntry.FindAllStringSubmatch(out, -1) {
		names = append(names, m[1])
	}
	return names
}

// arvRun runs arv-tool on camera id.
func arvRun(ctx context.Context, path, id string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, path, append([]string{"-n", id}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %v", arvTool, err)
	}
	return string(out), nil
}

// checkGenicam reads camera id's features with arv-tool and returns the
// pixel format to ask for, or a RefusedError for the first setting of g
// the camera does not take. Without arv-tool it checks nothing.
func checkGenicam(ctx context.Context, id string, g Genicam) (*pixelFormat, error) {
	pf := pixelFormatNamed(g.PixelFormat) // nil when unset
	path, err := exec.LookPath(arvTool)
	if err != nil {
		return pf, nil
	}
	out, err := arvRun(ctx, path, id, "control", "PixelFormat", "ExposureTime", "ExposureTimeAbs",
		"Gain", "GainRaw", "GainAbs", "AcquisitionFrameRate", "AcquisitionFrameRateAbs")
	if err != nil {
		return nil, fmt.Errorf("camera %q: %w", id, err)
	}
	fs := parseArvControl(out)
	cur, ok := fs["PixelFormat"]
	if !ok {
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return nil, fmt.Errorf("camera %q: %s cannot read it: %s", id, arvTool, first)
	}
	offered := func() []string { // nil: unknown
		out, err := arvRun(ctx, path, id, "features", "PixelFormat")
		if err != nil {
			return nil
		}
		return parseArvEntries(out)
	}
	readable := func(names []string) []string { // those gnld reads
		var ok []string
		for _, n := range names {
			if pixelFormatNamed(n) != nil {
				ok = append(ok, n)
			}
		}
		return ok
	}
	switch {
	case pf == nil:
		if pf = pixelFormatNamed(cur.value); pf == nil {
			return nil, &RefusedError{Camera: id, Setting: "PIXEL_FORMAT",
				Why: fmt.Sprintf("the camera's pixel format %s is not one gnld reads; set one of %s", cur.value, list(readable(offered())))}
		}
	case !slices.Contains(pf.names, cur.value):
		names := offered()
		if names != nil && !slices.ContainsFunc(names, func(n string) bool { return slices.Contains(pf.names, n) }) {
			return nil, &RefusedError{Camera: id, Setting: "PIXEL_FORMAT", Value: g.PixelFormat,
				Why: fmt.Sprintf("the camera offers %s (gnld reads %s)", list(names), list(readable(names)))}
		}
	}
	// The features ArvCamera writes for a generic camera (arvcamera.c).
	checks := []struct {
		setting string
		set     bool
		v       float64
		feats   []string
		unit    string
	}{
		{"EXPOSURE_US", g.ExposureUS > 0, g.ExposureUS, []string{"ExposureTime", "ExposureTimeAbs"}, " µs"},
		{"GAIN_DB", g.GainDB != nil, deref(g.GainDB), []string{"Gain", "GainRaw", "GainAbs"}, ""},
		{"FRAME_RATE", g.FrameRate > 0, g.FrameRate, []string{"AcquisitionFrameRate", "AcquisitionFrameRateAbs"}, " Hz"},
	}
	for _, c := range checks {
		if !c.set {
			continue
		}
		value := strconv.FormatFloat(c.v, 'g', -1, 64)
		i := slices.IndexFunc(c.feats, func(f string) bool { _, ok := fs[f]; return ok })
		if i < 0 {
			return nil, &RefusedError{Camera: id, Setting: c.setting, Value: value, Why: "the camera has no " + strings.Join(c.feats, " or ")}
		}
		f := fs[c.feats[i]]
		unit := c.unit
		if c.feats[i] != "Gain" && c.setting == "GAIN_DB" {
			unit = " (raw units: the camera has no Gain in dB, and Aravis writes the value to " + c.feats[i] + " as it is)"
		}
		if f.bounded && (c.v < f.min-1e-9*math.Abs(f.min) || c.v > f.max+1e-9*math.Abs(f.max)) {
			return nil, &RefusedError{Camera: id, Setting: c.setting, Value: value,
				Why: fmt.Sprintf("%s takes %g to %g%s", c.feats[i], f.min, f.max, unit)}
		}
	}
	return pf, nil
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
