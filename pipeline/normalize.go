package pipeline

import (
	"math"

	"gnld/models"
)

// element is a model input element type.
type element interface{ float32 | int8 | uint8 }

// lookupTables builds the 3x256 table pixel value -> input tensor value, per
// channel in model order, exactly as gnl/preprocess.py lookup_tables does:
// float64 arithmetic, round half away from zero, clamp, then conversion to
// the tensor type. Both sides index the same table, so normalisation and
// quantization agree bit for bit (TestLookupTablesMatchPython).
func lookupTables[T element](in models.Input) *[3][256]T {
	var t [3][256]T
	for c := range 3 {
		for v := range 256 {
			x := (float64(v)/255.0 - in.Mean[c]) / in.Std[c]
			var out T
			switch p := any(&out).(type) {
			case *float32:
				*p = float32(x)
			case *int8:
				*p = int8(quantize(x, in.Quantization, -128, 127))
			case *uint8:
				*p = uint8(quantize(x, in.Quantization, 0, 255))
			}
			t[c][v] = out
		}
	}
	return &t
}

func quantize(x float64, q models.Quantization, lo, hi float64) float64 {
	v := x / q.Scale
	r := math.Copysign(math.Floor(math.Abs(v)+0.5), v) + float64(q.ZeroPoint)
	return min(max(r, lo), hi)
}

// fill writes the interleaved 8-bit pixels px (BGR, as OpenCV stores them)
// into the NHWC input dst through the tables, in model channel order. With
// rgb set it swaps B and R here, which equals BUNDLE.md's cvtColor(BGR2RGB)
// before the resize: both are per-channel, so the order of the two does not
// change a single value, and the frame is never converted as a whole.
func fill[T element](dst []T, px []byte, lut *[3][256]T, rgb bool) {
	l0, l1, l2 := &lut[0], &lut[1], &lut[2]
	n := min(len(dst), len(px)) / 3 * 3
	dst, px = dst[:n], px[:n]
	if rgb {
		for i := 0; i < n; i += 3 {
			dst[i], dst[i+1], dst[i+2] = l0[px[i+2]], l1[px[i+1]], l2[px[i]]
		}
		return
	}
	for i := 0; i < n; i += 3 {
		dst[i], dst[i+1], dst[i+2] = l0[px[i]], l1[px[i+1]], l2[px[i+2]]
	}
}
