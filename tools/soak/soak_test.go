package main

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The 60-minute plan meets the counts, never overlaps faults of
// one kind, keeps the warm-up and cool-down free, and depends only on
// the seed.
func TestSchedule(t *testing.T) {
	total := time.Hour
	lanes := schedule(1, total)
	counts := map[string]int{}
	for _, lane := range lanes {
		for i, f := range lane {
			counts[f.Kind]++
			if f.At < warmUp || f.At+f.Dur > total-coolDown {
				t.Errorf("%s at %s for %s: outside the fault window", f.Kind, f.At, f.Dur)
			}
			if i > 0 && lane[i-1].At+lane[i-1].Dur > f.At {
				t.Errorf("%s at %s overlaps the one before (at %s for %s)", f.Kind, f.At, lane[i-1].At, lane[i-1].Dur)
			}
		}
	}
	if n := counts[faultBroker] + counts[faultFill]; n < minBrokerPerHour {
		t.Errorf("%d broker restarts in an hour, want >= %d", n, minBrokerPerHour)
	}
	if counts[faultFill] != 1 {
		t.Errorf("%d spool fills, want 1", counts[faultFill])
	}
	if counts[faultStream] < minStreamPerHour {
		t.Errorf("%d stream outages in an hour, want >= %d", counts[faultStream], minStreamPerHour)
	}
	for _, k := range []string{faultRestart, faultHUP, faultStarve} {
		if counts[k] == 0 {
			t.Errorf("no %s fault planned", k)
		}
	}
	if !reflect.DeepEqual(lanes, schedule(1, total)) {
		t.Error("the same seed gave another plan")
	}
	if reflect.DeepEqual(lanes, schedule(2, total)) {
		t.Error("seeds 1 and 2 gave the same plan")
	}
}

// memSlopes finds the slope within runs whatever each run's level, and
// leaves each run's warm-up out.
func TestMemSlopes(t *testing.T) {
	var samples []sample
	for run, base := range map[int]float64{1: 200, 2: 150} {
		for age := 0.0; age < 1200; age += 5 {
			rss := base + 12*age/3600 // 12 MB/h
			if age < memWarmUp.Seconds() {
				rss += 80 // warm-up: left out
			}
			samples = append(samples, sample{Run: run, Age: age, RSSMB: rss, Goroutines: 20})
		}
	}
	runs := []runReport{{gnldRun: gnldRun{N: 1}}, {gnldRun: gnldRun{N: 2}}}
	m := memSlopes(samples, runs, nil)
	if math.Abs(m.RSSSlopeMBPerH-12) > 1e-6 || m.GoroutineSlopeH != 0 {
		t.Errorf("slopes %g MB/h, %g goroutines/h; want 12 and 0", m.RSSSlopeMBPerH, m.GoroutineSlopeH)
	}
	for _, r := range runs {
		if r.RSSSlope == nil || math.Abs(*r.RSSSlope-12) > 1e-6 {
			t.Errorf("run %d: slope %v, want 12", r.N, r.RSSSlope)
		}
	}
}

// A fault as it happened keeps its times and note through JSON (done
// embeds fault, whose JSON methods it would otherwise take), in seconds.
func TestDoneJSON(t *testing.T) {
	start := time.Date(2026, 11, 29, 1, 2, 3, 0, time.UTC)
	d := done{fault{90 * time.Second, faultBroker, 12 * time.Second}, start, start.Add(12 * time.Second), "note"}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"at_s":90,`) || !strings.Contains(string(b), `"note":"note"`) {
		t.Errorf("JSON %s: want at_s in seconds and the note", b)
	}
	var back done
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, d) {
		t.Errorf("round trip: %+v, %v; want %+v", back, err, d)
	}
}
