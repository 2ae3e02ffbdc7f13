package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

func TestParseSourceGenicam(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
		err  string
	}{
		{in: "genicam:Aravis-Fake-GV01", want: Spec{KindGenicam, "Aravis-Fake-GV01"}},
		{in: "genicam:192.168.10.20", want: Spec{KindGenicam, "192.168.10.20"}},
		{in: "genicam:00:30:53:12:34:56", want: Spec{KindGenicam, "00:30:53:12:34:56"}},
		{in: "genicam:Top camera", want: Spec{KindGenicam, "Top camera"}}, // a user-defined name
		{in: "genicam:", err: "empty camera id"},
		{in: "genicam:  ", err: "empty camera id"},
		{in: `genicam:a"b`, err: `character '"' not allowed`},
		{in: "genicam:Basler-*", err: "character '*' not allowed"},
		{in: "genicam:a ! fakesink", err: "character '!' not allowed"},
		{in: "genicam:a\nb", err: `character '\n' not allowed`},
	} {
		got, err := ParseSource(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "expected genicam:<camera id>")):
			t.Errorf("ParseSource(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseSource(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		case tc.err == "" && (got.Finite() || got.String() != tc.in):
			t.Errorf("ParseSource(%q): finite %v, String %q", tc.in, got.Finite(), got.String())
		}
	}
}

func TestGenicamPipeline(t *testing.T) {
	gain := 6.5
	for _, tc := range []struct {
		g    Genicam
		pf   string
		want string
	}{
		{Genicam{}, "", `aravissrc camera-name="cam" ! videoconvert ! video/x-raw,format=BGR ! appsink max-buffers=1 drop=true sync=false`},
		{Genicam{FrameRate: 7.5}, "", `aravissrc camera-name="cam" ! video/x-raw,framerate=15/2 ! videoconvert ! video/x-raw,format=BGR ! appsink max-buffers=1 drop=true sync=false`},
		{Genicam{ExposureUS: 2500, GainDB: &gain, FrameRate: 25}, "Mono8",
			`aravissrc camera-name="cam" exposure=2500 gain=6.5 ! video/x-raw,format=GRAY8,framerate=25/1 ! videoconvert ! video/x-raw,format=BGR ! appsink max-buffers=1 drop=true sync=false`},
		{Genicam{ExposureUS: 1e6}, "BayerRG8", `aravissrc camera-name="cam" exposure=1000000 ! video/x-bayer,format=rggb ! appsink max-buffers=1 drop=true sync=false`},
		{Genicam{}, "RGB8Packed", `aravissrc camera-name="cam" ! video/x-raw,format=RGB ! videoconvert ! video/x-raw,format=BGR ! appsink max-buffers=1 drop=true sync=false`},
	} {
		if got := genicamPipeline("cam", tc.g, pixelFormatNamed(tc.pf)); got != tc.want {
			t.Errorf("%+v %s:\n got %s\nwant %s", tc.g, tc.pf, got, tc.want)
		}
	}
	if n, d := fraction(29.97); n != 2997 || d != 100 {
		t.Errorf("fraction(29.97) = %d/%d", n, d)
	}
}

func TestGenicamSettingsCheck(t *testing.T) {
	neg, big := -1.0, 501.0
	s, _ := ParseSource("genicam:cam")
	for _, tc := range []struct {
		source string
		g      Genicam
		want   string
	}{
		{"genicam:cam", Genicam{PixelFormat: "Mono12"}, `pixel format "Mono12": expected one of Mono8, Mono16, RGB8,`},
		{"genicam:cam", Genicam{ExposureUS: -5}, "exposure -5 µs"},
		{"genicam:cam", Genicam{GainDB: &neg}, "gain -1 dB: expected 0 to 500"},
		{"genicam:cam", Genicam{GainDB: &big}, "gain 501 dB"},
		{"genicam:cam", Genicam{FrameRate: -1}, "frame rate -1"},
		{"dir:/x", Genicam{FrameRate: 10}, "are for genicam: sources only"},
	} {
		cfg := testConfig("c", tc.source)
		cfg.Genicam = tc.g
		if _, err := New(cfg, testLogger(t)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %+v: %v; want an error containing %q", tc.source, tc.g, err, tc.want)
		}
	}
	cfg := testConfig("c", "genicam:cam")
	cfg.Genicam = Genicam{PixelFormat: "BayerGB8", ExposureUS: 100, FrameRate: 30}
	if _, err := New(cfg, testLogger(t)); err != nil || s.Kind != KindGenicam {
		t.Errorf("valid settings: %v", err)
	}
}

// ackPacket is a DISCOVERY_ACK as a camera sends it.
func ackPacket(vendor, model, serial, user string, mac [6]byte, ip net.IP) []byte {
	p := make([]byte, gvcpAckSize)
	binary.BigEndian.PutUint16(p[2:], gvcpDiscoveryAck)
	binary.BigEndian.PutUint16(p[4:], 0xf8)
	d := p[8:]
	copy(d[0x0a:], mac[:])
	copy(d[0x24:], ip.To4())
	copy(d[0x48:], vendor)
	copy(d[0x68:], model)
	copy(d[0xd8:], serial)
	copy(d[0xe8:], user)
	return p
}

func TestDiscoveryAck(t *testing.T) {
	mac := [6]byte{0x00, 0x30, 0x53, 0x12, 0x34, 0x56}
	c, err := parseDiscoveryAck(ackPacket("The Imaging Source Europe GmbH", "DMK 33GX", "4910\x01123", "top", mac, net.IPv4(10, 0, 0, 7)))
	if err != nil {
		t.Fatal(err)
	}
	if c.ID() != "The Imaging Source Europe GmbH-DMK 33GX-4910123" || c.String() != "The Imaging Source Europe GmbH-DMK 33GX-4910123 (10.0.0.7)" {
		t.Errorf("id %q, %s", c.ID(), c)
	}
	for _, id := range []string{c.ID(), "top", "The Imaging Source Europe GmbH-4910123", "TIS-4910123", "00:30:53:12:34:56", "10.0.0.7"} {
		if !c.Matches(id) {
			t.Errorf("%q does not match %+v", id, c)
		}
	}
	for _, id := range []string{"", "TIS-49101", "10.0.0.8", "DMK 33GX"} {
		if c.Matches(id) {
			t.Errorf("%q matches", id)
		}
	}
	// No serial: Aravis takes the MAC.
	c, _ = parseDiscoveryAck(ackPacket("Aravis", "Fake", "", "", mac, net.IPv4(127, 0, 0, 1)))
	if c.ID() != "Aravis-Fake-00:30:53:12:34:56" {
		t.Errorf("id %q", c.ID())
	}
	if _, err := parseDiscoveryAck(make([]byte, 40)); err == nil {
		t.Error("a short packet parsed")
	}
}

// A camera that answers discovery on a loopback address of its own (not
// 127.0.0.1, where cmd/gnld's tests run the Aravis simulator): the
// discovery sent to its address finds it at once; once it is gone, the
// discovery is refused at once.
func TestDiscoverGigE(t *testing.T) {
	addr := net.IPv4(127, 0, 0, 3)
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: addr, Port: gvcpPort})
	if err != nil {
		t.Skipf("port %d on %s: %v", gvcpPort, addr, err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n == 8 && binary.BigEndian.Uint16(buf[2:]) == gvcpDiscoveryCmd {
				pc.WriteToUDP(ackPacket("Acme", "Eye", "S1", "", [6]byte{2, 0, 0, 0, 0, 1}, addr), from)
			}
		}
	}()
	start := time.Now()
	seen, err := discoverGigE(context.Background(), "127.0.0.3", 2*time.Second)
	i := slices.IndexFunc(seen, func(c gigeCamera) bool { return c.Matches("127.0.0.3") })
	if err != nil || i < 0 || !seen[i].Matches("Acme-Eye-S1") || time.Since(start) > time.Second {
		t.Errorf("found %v (%v) after %s; want Acme-Eye-S1 at once", seen, err, time.Since(start))
	}
	pc.Close()
	start = time.Now()
	seen, _ = discoverGigE(context.Background(), "127.0.0.3", 2*time.Second)
	if slices.ContainsFunc(seen, func(c gigeCamera) bool { return c.Matches("127.0.0.3") }) || time.Since(start) > time.Second {
		t.Errorf("no camera: found %v after %s", seen, time.Since(start))
	}
}

// fakeArvTool puts a script named like arv-tool in a folder on PATH that
// prints control and features for the fake camera's features.
func fakeArvTool(t *testing.T, control string) {
	dir := t.TempDir()
	script := "#!/bin/sh\ncase \"$3\" in\ncontrol) cat <<'EOF'\n" + control + "EOF\n;;\nfeatures) cat <<'EOF'\n" +
		"        Enumeration  : [RW] 'PixelFormat'\n            EnumEntry   : 'Mono16'\n            EnumEntry   : 'Mono8'\n            EnumEntry   : 'BayerRG12'\nEOF\n;;\nesac\n"
	if err := os.WriteFile(filepath.Join(dir, arvTool), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

const fakeControl = `PixelFormat = Mono8
Feature 'ExposureTime' not found
ExposureTimeAbs = 10000 min:10 max:1e+07
Feature 'Gain' not found
GainRaw = 0 min:0 max:10
Feature 'GainAbs' not found
AcquisitionFrameRate = 25 min:0.1 max:1000
Feature 'AcquisitionFrameRateAbs' not found
`

func TestGenicamCameraCheck(t *testing.T) {
	fakeArvTool(t, fakeControl)
	gain, gainHigh := 4.0, 11.0
	for _, tc := range []struct {
		g      Genicam
		wantPF string
		want   string // "": accepted
	}{
		{Genicam{}, "Mono8", ""},
		{Genicam{PixelFormat: "Mono16", ExposureUS: 10, GainDB: &gain, FrameRate: 1000}, "Mono16", ""},
		{Genicam{PixelFormat: "RGB8"}, "", `camera "cam" refuses PIXEL_FORMAT=RGB8 (GNLD_CAMERA_<NAME>_PIXEL_FORMAT): the camera offers Mono16, Mono8, BayerRG12 (gnld reads Mono16, Mono8)`},
		{Genicam{ExposureUS: 5}, "", `camera "cam" refuses EXPOSURE_US=5 (GNLD_CAMERA_<NAME>_EXPOSURE_US): ExposureTimeAbs takes 10 to 1e+07 µs`},
		{Genicam{GainDB: &gainHigh}, "", "refuses GAIN_DB=11 (GNLD_CAMERA_<NAME>_GAIN_DB): GainRaw takes 0 to 10 (raw units: the camera has no Gain in dB"},
		{Genicam{FrameRate: 5000}, "", "refuses FRAME_RATE=5000 (GNLD_CAMERA_<NAME>_FRAME_RATE): AcquisitionFrameRate takes 0.1 to 1000 Hz"},
	} {
		pf, err := checkGenicam(context.Background(), "cam", tc.g)
		if tc.want == "" {
			if err != nil || pf == nil || pf.names[0] != tc.wantPF {
				t.Errorf("%+v: %v, %v; want %s", tc.g, pf, err, tc.wantPF)
			}
			continue
		}
		if _, ok := errors.AsType[*RefusedError](err); !ok || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want a RefusedError containing %q", tc.g, err, tc.want)
		}
	}

	// A camera in a format gnld does not read, without a setting.
	fakeArvTool(t, strings.Replace(fakeControl, "PixelFormat = Mono8", "PixelFormat = BayerRG12", 1))
	_, err := checkGenicam(context.Background(), "cam", Genicam{})
	if want := `camera "cam": GNLD_CAMERA_<NAME>_PIXEL_FORMAT is unset and the camera's pixel format BayerRG12 is not one gnld reads; set one of Mono16, Mono8`; err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	// A camera without exposure control.
	fakeArvTool(t, "PixelFormat = Mono8\n")
	if _, err := checkGenicam(context.Background(), "cam", Genicam{ExposureUS: 100}); err == nil ||
		!strings.Contains(err.Error(), "the camera has no ExposureTime or ExposureTimeAbs") {
		t.Errorf("no exposure feature: %v", err)
	}
	// arv-tool cannot reach the camera.
	fakeArvTool(t, "Device 'cam' not found\n")
	if _, err := checkGenicam(context.Background(), "cam", Genicam{}); err == nil ||
		err.Error() != `camera "cam": arv-tool-0.8 cannot read it: Device 'cam' not found` {
		t.Errorf("unreadable camera: %v", err)
	}
	// Without arv-tool nothing is checked.
	t.Setenv("PATH", t.TempDir())
	if pf, err := checkGenicam(context.Background(), "cam", Genicam{PixelFormat: "BayerBG8", ExposureUS: 1}); err != nil || pf.names[0] != "BayerBG8" {
		t.Errorf("without arv-tool: %v %v", pf, err)
	}
}

// A camera that is not there: the connection fails at once with an error
// that names the id.
func TestGenicamNotFound(t *testing.T) {
	reads := make(chan read)
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	go readLoop(Spec{KindGenicam, "127.0.0.4"}, Genicam{}, "", reads, stop)
	r := <-reads
	r.mat.Close()
	if r.err == nil || !strings.HasPrefix(r.err.Error(), `camera "127.0.0.4": not found: no GigE Vision camera answers`) || !errors.Is(r.err, errNotFound) {
		t.Fatalf("got %v", r.err)
	}
	t.Logf("%s after %s", r.err, time.Since(start).Round(time.Millisecond))
	if time.Since(start) > time.Second {
		t.Errorf("took %s", time.Since(start))
	}
}

// Frames libaravis gives in trigger mode become 8-bit BGR.
func TestToBGR(t *testing.T) {
	const w, h = 4, 4
	for _, tc := range []struct {
		format string
		data   []byte
		want   [3]uint8 // BGR of pixel (2,2), within 3 (Bayer borders are 0; YUV is video range)
	}{
		{"Mono8", bytes.Repeat([]byte{200}, w*h), [3]uint8{200, 200, 200}},
		{"Mono16", bytes.Repeat([]byte{0x00, 0x80}, w*h), [3]uint8{128, 128, 128}},
		{"RGB8", bytes.Repeat([]byte{10, 20, 30}, w*h), [3]uint8{30, 20, 10}},
		{"BayerRG8", bytes.Repeat([]byte{90}, w*h), [3]uint8{90, 90, 90}},
		{"YUV422_8_UYVY", bytes.Repeat([]byte{128, 100}, w*h), [3]uint8{100, 100, 100}},
	} {
		m, err := toBGR(tc.data, w, h, pixelFormatNamed(tc.format).pfnc)
		if err != nil {
			t.Errorf("%s: %v", tc.format, err)
			continue
		}
		v := m.GetVecbAt(2, 2)
		near := func(a, b uint8) bool { return int(a)-int(b) <= 3 && int(b)-int(a) <= 3 }
		if m.Type() != gocv.MatTypeCV8UC3 || m.Cols() != w || m.Rows() != h || !near(v[0], tc.want[0]) || !near(v[1], tc.want[1]) || !near(v[2], tc.want[2]) {
			t.Errorf("%s: %dx%d type %v pixel %v, want %dx%d BGR %v", tc.format, m.Cols(), m.Rows(), m.Type(), v, w, h, tc.want)
		}
		m.Close()
	}
	if _, err := toBGR(make([]byte, 3), w, h, pixelFormatNamed("Mono8").pfnc); err == nil {
		t.Error("short frame: no error")
	}
	if _, err := toBGR(make([]byte, w*h*2), w, h, 0x010c0006); err == nil { // Mono12
		t.Error("Mono12: no error")
	}
}
