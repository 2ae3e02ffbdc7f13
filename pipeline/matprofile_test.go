//go:build matprofile

package pipeline

import (
	"strings"
	"testing"

	"gocv.io/x/gocv"
)

// TestNoMatLeaks: Process creates no Mats, Close frees all the pipeline's.
// Run with: go test -tags matprofile ./pipeline/
func TestNoMatLeaks(t *testing.T) {
	frame := gocv.IMRead(testImages(t)[0], gocv.IMReadColor)
	defer frame.Close()
	before := gocv.MatProfile.Count()
	p := newTiny(t, "../models/testdata/tiny")
	if _, err := p.Process(frame); err != nil {
		t.Fatal(err)
	}
	steady := gocv.MatProfile.Count()
	for range 10 {
		if _, err := p.Process(frame); err != nil {
			t.Fatal(err)
		}
	}
	if n := gocv.MatProfile.Count(); n != steady {
		t.Errorf("%d Mats after 10 frames, %d before", n, steady)
	}
	p.Close()
	if n := gocv.MatProfile.Count(); n != before {
		var b strings.Builder
		gocv.MatProfile.WriteTo(&b, 1)
		t.Errorf("%d Mats open after Close, %d before:\n%s", n, before, b.String())
	}
}
