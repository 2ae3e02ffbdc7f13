package web

import "math"

// bucket is one second of a camera's scores.
type bucket struct {
	T    int64   // Unix second
	Max  float32 // highest score in the second
	N    uint32  // frames
	Anom uint32  // anomalous frames
}

// maxStepBack is how far (seconds) the clock may step back before a
// history starts afresh.
const maxStepBack = 5

// history is a ring of per-second buckets, the newest last. add never
// allocates.
type history struct {
	b    []bucket
	head int // index of the oldest bucket
	n    int
}

func newHistory(seconds int) history { return history{b: make([]bucket, max(seconds, 1))} }

func (h *history) add(sec int64, score float32, anomalous bool) {
	var a uint32
	if anomalous {
		a = 1
	}
	if h.n > 0 {
		last := &h.b[(h.head+h.n-1)%len(h.b)]
		switch {
		case sec < last.T-maxStepBack:
			// The system clock was set back: start afresh, or every
			// frame would merge into the last second until the clock
			// caught up with it, and the plot would stand still.
			h.head, h.n = 0, 0
		case sec <= last.T: // same second (or a small step back): merge
			last.Max, last.N, last.Anom = max(last.Max, score), last.N+1, last.Anom+a
			return
		}
	}
	nb := bucket{T: sec, Max: score, N: 1, Anom: a}
	if h.n < len(h.b) {
		h.b[(h.head+h.n)%len(h.b)] = nb
		h.n++
		return
	}
	h.b[h.head] = nb
	h.head = (h.head + 1) % len(h.b)
}

// since returns the buckets from Unix second from on, oldest first, as
// [t, max, frames, anomalous] rows (compact JSON for the page).
func (h *history) since(from int64) [][4]float64 {
	var out [][4]float64
	for i := range h.n {
		b := h.b[(h.head+i)%len(h.b)]
		if b.T >= from {
			out = append(out, [4]float64{float64(b.T), round4(b.Max), float64(b.N), float64(b.Anom)})
		}
	}
	return out
}

// round4 keeps four decimals: float32 scores in JSON without float noise.
func round4(x float32) float64 { return math.Round(float64(x)*1e4) / 1e4 }
