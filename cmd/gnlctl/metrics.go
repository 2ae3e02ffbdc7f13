package main

// Go ports of gnl/metrics.py (image AUROC, F1Max, pixel AUROC, AUPRO to FPR
// 0.3), so that `gnlctl eval` measures gnld's own pipeline with the same
// definitions. metrics_test.go checks them against the Python functions.

import (
	"errors"
	"math"
	"slices"
)

const fprLimit = 0.3

// sortKey maps a float32 to a uint32 with the same order.
func sortKey(f float32) uint32 {
	b := math.Float32bits(f)
	if b>>31 == 1 {
		return ^b
	}
	return b | 1<<31
}

// pixels accumulates every pixel of every evaluated image for pixel AUROC
// and AUPRO: its score (upper 32 bits, order-preserving) and its
// ground-truth region (lower 32 bits, 0 = normal pixel), in one uint64 so
// that millions of pixels sort in place.
type pixels struct {
	keys []uint64
	area []float64 // area[r] is region r's pixel count; area[0] unused
}

func newPixels() *pixels { return &pixels{area: []float64{0}} }

// add appends one image: scores and region labels (0 normal, 1..n regions
// of this image, as connected components number them), same length.
func (p *pixels) add(scores []float32, labels []int32, regions int) {
	base := uint64(len(p.area) - 1)
	first := len(p.area)
	p.area = append(p.area, make([]float64, regions)...)
	for i, s := range scores {
		r := uint64(0)
		if l := labels[i]; l > 0 {
			r = base + uint64(l)
			p.area[first+int(l)-1]++
		}
		p.keys = append(p.keys, uint64(sortKey(s))<<32|r)
	}
}

// metrics sorts the pixels and returns pixel AUROC and AUPRO.
func (p *pixels) metrics() (auroc, aupro float64, err error) {
	slices.Sort(p.keys)
	var pos, neg float64
	for _, k := range p.keys {
		if uint32(k) != 0 {
			pos++
		} else {
			neg++
		}
	}
	regions := float64(len(p.area) - 1)
	if pos == 0 || neg == 0 || regions == 0 {
		return 0, 0, errors.New("pixel metrics need defect regions and normal pixels")
	}
	// Walk from the highest score down, one tie group at a time.
	var tp, fp, pro, area float64
	prevFPR, prevPRO := 0.0, 0.0
	done := false
	for end := len(p.keys); end > 0; {
		key := p.keys[end-1] >> 32
		start := end - 1
		for start > 0 && p.keys[start-1]>>32 == key {
			start--
		}
		var gPos, gNeg float64
		for _, k := range p.keys[start:end] {
			if r := uint32(k); r != 0 {
				gPos++
				pro += 1 / (p.area[r] * regions)
			} else {
				gNeg++
			}
		}
		auroc += gNeg * (tp + gPos/2)
		tp += gPos
		fp += gNeg
		if fpr := fp / neg; !done {
			if fpr <= fprLimit {
				area += (fpr - prevFPR) * (pro + prevPRO) / 2
				prevFPR, prevPRO = fpr, pro
			} else {
				// Cut the segment at fprLimit, linearly.
				y := prevPRO + (pro-prevPRO)*(fprLimit-prevFPR)/(fpr-prevFPR)
				area += (fprLimit - prevFPR) * (y + prevPRO) / 2
				done = true
			}
		}
		end = start
	}
	return auroc / (pos * neg), area / fprLimit, nil
}

// imageAUROC is the Mann-Whitney AUROC of scores, ties counted 1/2.
func imageAUROC(labels []bool, scores []float64) (float64, error) {
	var pos, neg, auc, tp float64
	err := tieGroups(labels, scores, func(gPos, gNeg float64) {
		auc += gNeg * (tp + gPos/2)
		tp += gPos
		pos += gPos
		neg += gNeg
	})
	if err != nil {
		return 0, err
	}
	return auc / (pos * neg), nil
}

// imageF1Max is the best F1 over all thresholds (score >= t is anomalous).
func imageF1Max(labels []bool, scores []float64) (float64, error) {
	var P float64
	for _, l := range labels {
		if l {
			P++
		}
	}
	var tp, fp, best float64
	err := tieGroups(labels, scores, func(gPos, gNeg float64) {
		tp += gPos
		fp += gNeg
		best = max(best, 2*tp/(tp+fp+P))
	})
	return best, err
}

// tieGroups calls f for each group of equal scores, highest first, with the
// group's positive and negative counts.
func tieGroups(labels []bool, scores []float64, f func(gPos, gNeg float64)) error {
	idx := make([]int, len(scores))
	var pos int
	for i := range idx {
		idx[i] = i
		if labels[i] {
			pos++
		}
	}
	if pos == 0 || pos == len(labels) {
		return errors.New("image metrics need normal and anomalous images")
	}
	slices.SortFunc(idx, func(a, b int) int { return -cmpFloat(scores[a], scores[b]) })
	for start := 0; start < len(idx); {
		end := start
		var gPos, gNeg float64
		for ; end < len(idx) && scores[idx[end]] == scores[idx[start]]; end++ {
			if labels[idx[end]] {
				gPos++
			} else {
				gNeg++
			}
		}
		f(gPos, gNeg)
		start = end
	}
	return nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
