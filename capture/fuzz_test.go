package capture

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"gnld/internal/mtd"
)

// FuzzDirImage puts arbitrary bytes in a folder source as an image file,
// before a good image, and reads the folder as a camera does: the bad
// file must give an empty frame (counted and skipped by the camera) or a
// proper 8-bit BGR frame, never a crash in OpenCV's decoders, and the
// folder must go on to the good image and then end. Seeds: a real MTD
// image as JPEG, PNG and BMP, whole and truncated, and garbage.
func FuzzDirImage(f *testing.F) {
	good, err := filepath.Glob(filepath.Join(mtd.Dir(f), "test", "good", "*.jpg"))
	if err != nil || len(good) == 0 {
		f.Fatalf("no MTD test images: %v", err)
	}
	img := gocv.IMRead(good[0], gocv.IMReadColor)
	if img.Empty() {
		f.Fatalf("%s: cannot read", good[0])
	}
	defer img.Close()
	for i, ext := range []gocv.FileExt{gocv.JPEGFileExt, gocv.PNGFileExt, ".bmp"} {
		buf, err := gocv.IMEncode(ext, img)
		if err != nil {
			f.Fatal(err)
		}
		data := append([]byte(nil), buf.GetBytes()...)
		buf.Close()
		f.Add(data, uint8(i))
		f.Add(data[:len(data)/2], uint8(i))
		f.Add(data[:64], uint8(i))
	}
	f.Add([]byte("not an image at all"), uint8(0))
	f.Add([]byte{}, uint8(1))

	dir := f.TempDir()
	goodData, err := os.ReadFile(good[0])
	if err != nil {
		f.Fatal(err)
	}
	// "z" sorts after every name the target writes.
	if err := os.WriteFile(filepath.Join(dir, "z.jpg"), goodData, 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, ext uint8) {
		name := "a" + imageExts[int(ext)%len(imageExts)]
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(path)
		r, err := openDir(dir, "")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		m := gocv.NewMat()
		defer func() { m.Close() }()
		for _, want := range []string{name, "z.jpg"} {
			file, err := r.Read(&m)
			if err != nil || file != want {
				t.Fatalf("read %q, %v; want %s", file, err, want)
			}
			if !m.Empty() && (m.Type() != gocv.MatTypeCV8UC3 || m.Rows() < 1 || m.Cols() < 1) {
				t.Fatalf("%s: frame %dx%d of type %v, want 8-bit BGR", file, m.Cols(), m.Rows(), m.Type())
			}
			if file == "z.jpg" && m.Empty() {
				t.Fatal("the good image after the bad one was not read")
			}
		}
		if _, err := r.Read(&m); err != io.EOF {
			t.Fatalf("after the last image: %v, want io.EOF", err)
		}
	})
}

// mtdDir is the MTD data set ($MTD, else ../shared/data/mtd beside the
// checkout); tests that need it skip without it.

// TestReadImageHugeHeader: the 64-byte BMP FuzzDirImage found, whose
// header says 23 million rows, made OpenCV abort the process; ReadImage
// returns an error with OpenCV's reason instead.
func TestReadImageHugeHeader(t *testing.T) {
	bmp := []byte("BM\x8e\x13\x04\x00\x00\x00\x00\x006\x00\x00\x00(\x00\x00\x00\xf8\x00\x00\x00g\x01\x00d\x01\x00\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\t\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00%%%(((\x1e\x1e\x1e\x1e")
	path := filepath.Join(t.TempDir(), "huge.bmp")
	if err := os.WriteFile(path, bmp, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := ReadImage(path, gocv.IMReadColor)
	defer m.Close()
	if err == nil || !m.Empty() {
		t.Fatalf("decoded a %dx%d image, err %v", m.Cols(), m.Rows(), err)
	}
	for _, want := range []string{path + ": cannot read image", "OpenCV", "validateInputImageSize"} {
		if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("error %q: want one line containing %q", err, want)
		}
	}
}

// TestImagePixelCapFromEnvironment: OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS
// once, when the library loads, and refuses larger images from their
// header, before it allocates anything. The systemd unit sets it (without
// it a header may ask for 2^30 pixels, 3 GB). It runs this test binary
// again with a cap below a real MTD image's size.
func TestImagePixelCapFromEnvironment(t *testing.T) {
	if os.Getenv("GNLD_TEST_PIXEL_CAP_CHILD") != "" {
		good, _ := filepath.Glob(filepath.Join(mtd.Dir(t), "test", "good", "*.jpg"))
		if len(good) == 0 {
			t.Fatal("no MTD test images")
		}
		m, err := ReadImage(good[0], gocv.IMReadColor)
		defer m.Close()
		if err == nil || !strings.Contains(err.Error(), "validateInputImageSize") {
			t.Fatalf("read %dx%d under a 10000-pixel cap, err %v", m.Cols(), m.Rows(), err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestImagePixelCapFromEnvironment$", "-test.v")
	cmd.Env = append(os.Environ(), "GNLD_TEST_PIXEL_CAP_CHILD=1", "OPENCV_IO_MAX_IMAGE_PIXELS=10000")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
