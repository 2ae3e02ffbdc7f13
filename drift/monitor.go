// Package drift warns when a camera's frames drift away from the images
// the model was trained on: light, focus, noise, a moved or turned camera.
//
// The bundle's drift.json (written by `gnl drift-stats`, gnl/drift.py)
// holds the training images' distribution of a few image features
// (brightness, contrast, black level, sharpness, colour balance, edge
// orientation, layout) and of the model's scores on normal images held
// back from training. A Monitor measures the same features on every Nth
// frame (Extractor, on a small copy) and turns each into z, the distance
// from the training median in units of the training spread. Its drift
// score is the largest, over features, of the median z of the last
// Window samples: a median, so single odd frames (a defect, a hand in the
// picture) do not count, only a change that holds for half the window.
// The feature it reports is the worst one, but an image feature past the
// threshold goes before the model's score, since it says what to fix.
//
// State: "ok" turns to "warning" when the drift score has been at or
// above Threshold for Hold samples in a row, and back to "ok" when it has
// been below two thirds of Threshold for Hold samples in a row.
//
// Lifecycle: New per camera; Observe from the camera's worker goroutine
// only; Status from any goroutine; Close when the camera stops.
package drift

import (
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"gocv.io/x/gocv"

	"gnld/models"
)

// States.
const (
	OK      = "ok"
	Warning = "warning"
)

// Hold is how many samples in a row the drift score must stay past a
// level before the state changes.
const Hold = 3

// Config sets a Monitor's sampling and levels.
type Config struct {
	Every     int     // measure every Nth frame (1: all)
	Window    int     // samples whose median makes the drift score
	Threshold float64 // drift score for a warning, in training spreads
	// OnChange, when set, is called (in Observe's goroutine) after each
	// change of state.
	OnChange func(Status)
}

// Status is a camera's drift state, as published (stats topic, page).
type Status struct {
	State string `json:"state"` // "ok" or "warning"
	// Score is the largest median z over features; Feature names it.
	Score   float64 `json:"score"`
	Feature string  `json:"feature,omitempty"`
	// Features are the median z per feature over the window: negative
	// means below the training median (darker, blurrier, ...).
	Features map[string]float64 `json:"features,omitempty"`
	Samples  uint64             `json:"samples"`          // frames measured since start
	Since    time.Time          `json:"since"`            // last change of state (or start)
	Hint     string             `json:"hint,omitempty"`   // what to check, for the feature that drifted
	Window   int                `json:"window"`           // samples in the median
	Every    int                `json:"every"`            // frames per sample
	Level    float64            `json:"threshold"`        // Config.Threshold
	Reason   string             `json:"reason,omitempty"` // while warming up: why there is no decision yet
}

// Monitor follows one camera. See the package comment.
type Monitor struct {
	cfg     Config
	ext     *Extractor
	feature []int     // indexes of the features in use
	median  []float64 // by feature index
	scale   []float64
	twoSide []bool

	frames  uint64
	samples uint64
	ring    [][numFeatures]float64 // z per sample, last Window samples
	next    int
	scratch []float64
	state   string
	hold    int
	since   time.Time

	status atomic.Pointer[Status]
}

// New makes a monitor from the bundle's drift statistics.
func New(ref *models.Drift, cfg Config) (*Monitor, error) {
	if cfg.Every < 1 || cfg.Window < 2 || !(cfg.Threshold > 0) {
		return nil, fmt.Errorf("drift: every %d, window %d, threshold %v: want 1+, 2+, above 0", cfg.Every, cfg.Window, cfg.Threshold)
	}
	ext, err := NewExtractor(ref)
	if err != nil {
		return nil, err
	}
	m := &Monitor{
		cfg: cfg, ext: ext, median: make([]float64, numFeatures), scale: make([]float64, numFeatures),
		twoSide: make([]bool, numFeatures), ring: make([][numFeatures]float64, 0, cfg.Window),
		scratch: make([]float64, cfg.Window), state: OK, since: time.Now(),
	}
	for i, name := range names {
		f, ok := ref.Features[name]
		if !ok {
			continue // the score is optional
		}
		m.feature = append(m.feature, i)
		m.median[i], m.scale[i], m.twoSide[i] = f.Median, f.Scale, f.TwoSided
	}
	m.status.Store(&Status{State: OK, Since: m.since, Window: cfg.Window, Every: cfg.Every, Level: cfg.Threshold,
		Reason: fmt.Sprintf("measuring: a decision needs %d samples", cfg.Window)})
	return m, nil
}

// HasScore reports whether the bundle has the held-back score distribution.
func (m *Monitor) HasScore() bool { return slices.Contains(m.feature, Score) }

// Close frees the extractor's Mats.
func (m *Monitor) Close() { m.ext.Close() }

// Status is the latest state; safe from any goroutine.
func (m *Monitor) Status() Status { return *m.status.Load() }

// Due reports whether the next Observe measures its frame.
func (m *Monitor) Due() bool { return m.frames%uint64(m.cfg.Every) == 0 }

// Observe takes one scored frame. Only every Nth frame is measured (a few
// hundred microseconds on the small copy); the others cost a counter.
func (m *Monitor) Observe(frame gocv.Mat, score float32) error {
	due := m.Due()
	m.frames++
	if !due {
		return nil
	}
	f, err := m.ext.Features(frame)
	if err != nil {
		return err
	}
	f[Score] = float64(score)
	m.add(f)
	return nil
}

// add records one sample's features and updates the state.
func (m *Monitor) add(f Features) {
	var z [numFeatures]float64
	for _, i := range m.feature {
		z[i] = (f[i] - m.median[i]) / m.scale[i]
	}
	if len(m.ring) < m.cfg.Window {
		m.ring = append(m.ring, z)
	} else {
		m.ring[m.next] = z
	}
	m.next = (m.next + 1) % m.cfg.Window
	m.samples++

	st := Status{State: m.state, Since: m.since, Samples: m.samples, Window: m.cfg.Window, Every: m.cfg.Every,
		Level: m.cfg.Threshold, Features: make(map[string]float64, len(m.feature))}
	worst, worstImage, imageScore := -1, -1, 0.0
	for _, i := range m.feature {
		s := m.scratch[:len(m.ring)]
		for k := range m.ring {
			s[k] = m.ring[k][i]
		}
		slices.Sort(s)
		med := s[len(s)/2]
		if len(s)%2 == 0 {
			med = (s[len(s)/2-1] + med) / 2
		}
		st.Features[names[i]] = round(med)
		d := med
		if m.twoSide[i] {
			d = math.Abs(med)
		}
		if worst < 0 || d > st.Score {
			worst, st.Score = i, d
		}
		if i != Score && (worstImage < 0 || d > imageScore) {
			worstImage, imageScore = i, d
		}
	}
	st.Score = round(max(st.Score, 0))
	// The feature named (and hinted at) is the worst, except that an image
	// feature past the threshold goes before the score: it says what to
	// fix, where a high score only says that something changed.
	if worst == Score && worstImage >= 0 && imageScore >= m.cfg.Threshold {
		worst = worstImage
	}
	st.Feature = names[worst]
	if len(m.ring) < m.cfg.Window {
		st.Reason = fmt.Sprintf("measuring: %d of %d samples", len(m.ring), m.cfg.Window)
		m.status.Store(&st)
		return
	}
	changed := m.step(st.Score)
	st.State, st.Since = m.state, m.since
	if m.state == Warning {
		st.Hint = hint(worst, st.Features[names[worst]])
	}
	m.status.Store(&st)
	if changed && m.cfg.OnChange != nil {
		m.cfg.OnChange(st)
	}
}

// step applies the hysteresis; it reports a change of state.
func (m *Monitor) step(score float64) bool {
	past := score >= m.cfg.Threshold
	if m.state == Warning {
		past = score < m.cfg.Threshold*2/3
	}
	if !past {
		m.hold = 0
		return false
	}
	m.hold++
	if m.hold < Hold {
		return false
	}
	m.hold = 0
	m.since = time.Now()
	if m.state == OK {
		m.state = Warning
	} else {
		m.state = OK
	}
	return true
}

func round(x float64) float64 { return math.Round(x*100) / 100 }

// hint says what a technician checks first when feature i drifted to z.
func hint(i int, z float64) string {
	switch {
	case i == Brightness || i == BlackLevel:
		if z > 0 {
			return "brighter than the training images: check lamps, shades, stray light, exposure and gain"
		}
		return "darker than the training images: check lamps (failed, dirty), shades, exposure and gain"
	case i == Contrast:
		return "contrast changed: check the lighting, glare on the lens or cover glass, exposure"
	case i == Sharpness && z < 0:
		return "blurrier than the training images: check focus, clean the lens, check for vibration or motion blur"
	case i == Sharpness:
		return "sharper or noisier than the training images: check gain, exposure time and the cable"
	case i == ColourRG || i == ColourBG:
		return "colour balance changed: check white balance and the lamp type"
	case i == Orientation:
		return "edge directions changed: the camera may be turned, or the image noisy; check the mount, ROI and rotation"
	case i == Layout:
		return "the picture is framed differently: the camera or the part has moved; check the mount, ROI and fixture"
	default:
		return "the model scores frames higher than held-back normal images: many defects, or a change the image statistics miss; look at the heatmaps"
	}
}
