package pipeline

import (
	"fmt"
	"image"

	"gocv.io/x/gocv"
)

// MapTo8 writes map m into dst (same length) on the colour scale of
// heatmaps and 8-bit maps: 0 at score 0, mid-scale at the threshold, full
// scale at twice the threshold, so that colours mean the same across
// frames and cameras with the same threshold.
func MapTo8(dst []byte, m []float32, threshold float32) {
	for i, v := range m {
		x := v / (2 * threshold) * 255
		dst[i] = byte(min(max(x+0.5, 0), 255))
	}
}

// RawMap8 is res.Map as 8 bits per pixel (MapW x MapH, row-major) on the
// heatmap colour scale. It reuses one buffer: valid until the next call.
func (p *Pipeline) RawMap8(res Result) []byte {
	out := p.map8[:len(res.Map)]
	MapTo8(out, res.Map, p.threshold)
	return out
}

// Heatmap renders res over frame as a PNG at the map's size: the JET colour
// map of RawMap8, blended half and half with the resized frame. Call it only
// when a heatmap is wanted; it allocates.
func (p *Pipeline) Heatmap(frame gocv.Mat, res Result) ([]byte, error) {
	if frame.Empty() || frame.Type() != gocv.MatTypeCV8UC3 {
		return nil, fmt.Errorf("heatmap: %w: want a non-empty 8-bit BGR frame", ErrFrame)
	}
	grey, err := gocv.NewMatFromBytes(res.MapH, res.MapW, gocv.MatTypeCV8U, p.RawMap8(res))
	if err != nil {
		return nil, fmt.Errorf("heatmap: %w", err)
	}
	defer grey.Close()
	colour, small, blend := gocv.NewMat(), gocv.NewMat(), gocv.NewMat()
	defer colour.Close()
	defer small.Close()
	defer blend.Close()
	gocv.ApplyColorMap(grey, &colour, gocv.ColormapJet)
	gocv.Resize(frame, &small, image.Pt(res.MapW, res.MapH), 0, 0, gocv.InterpolationLinear)
	gocv.AddWeighted(small, 0.5, colour, 0.5, 0, &blend)
	buf, err := gocv.IMEncode(gocv.PNGFileExt, blend)
	if err != nil {
		return nil, fmt.Errorf("heatmap: png: %w", err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}
