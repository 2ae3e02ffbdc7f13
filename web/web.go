// Package web is the technicians' page on gnld's HTTP listener
// (GNLD_HTTP_ADDR): per camera the latest frame with its anomaly heatmap,
// score and threshold, a score-history plot with the threshold line,
// verdict counts, the model's version and the drift state, live over
// server-sent events. Plain HTML and JavaScript, embedded (page/).
//
// Cost on the inference path: the camera's worker calls Camera.Observe
// after every scored frame. It records the score in a per-second history
// and counts the verdict: a mutex and no allocation. Only while a browser
// watches (an event stream is open, or the API was read in the last
// Grace) does Observe also keep a copy of the frame (downscaled) and of
// the map, at most every FrameEvery, and swap a pointer. JPEG and PNG are
// encoded by the HTTP handler, once per kept frame, when a browser asks.
//
// Lifecycle: New, then Camera for each camera, then Register on the mux;
// Observe from each camera's worker; the handlers from any goroutine;
// Close before shutting the HTTP server down.
package web

import (
	"embed"
	"encoding/json"
	"fmt"
	"image"
	"io/fs"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gocv.io/x/gocv"

	"gnld/drift"
	"gnld/pipeline"
)

//go:embed page
var page embed.FS

// Model names the model in service.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// Options tune the page. Zero values take the defaults.
type Options struct {
	Device, Site string
	History      time.Duration // score history plotted; default 10 minutes
	// FrameEvery is the shortest time between two kept frames while a
	// browser watches; default 200 ms.
	FrameEvery time.Duration
	// FrameWidth bounds the kept frame's longer side; default 640 pixels.
	FrameWidth int
	// Tick is how often event streams look for news; default 250 ms.
	Tick time.Duration
	// Grace keeps frames after the last API request (for clients that
	// poll instead of streaming); default 10 s.
	Grace time.Duration
}

// DriftSource gives a camera's drift state now, nil while its drift
// monitor is off. Called from the HTTP handlers' goroutines.
type DriftSource func() *drift.Status

// Hub serves the page and holds every camera's live state.
type Hub struct {
	opt     Options
	model   atomic.Pointer[Model]
	cams    []*Camera
	byName  map[string]*Camera
	start   time.Time
	streams atomic.Int32 // open event streams
	polled  atomic.Int64 // h.clock() at the last API request; 0: none yet
	done    chan struct{}
	closing sync.Once
}

// New makes a hub for model.
func New(model Model, opt Options) *Hub {
	if opt.History <= 0 {
		opt.History = 10 * time.Minute
	}
	if opt.FrameEvery <= 0 {
		opt.FrameEvery = 200 * time.Millisecond
	}
	if opt.FrameWidth <= 0 {
		opt.FrameWidth = 640
	}
	if opt.Tick <= 0 {
		opt.Tick = 250 * time.Millisecond
	}
	if opt.Grace <= 0 {
		opt.Grace = 10 * time.Second
	}
	h := &Hub{opt: opt, byName: map[string]*Camera{}, start: time.Now(), done: make(chan struct{})}
	h.model.Store(&model)
	return h
}

// Close ends the event streams, so that the HTTP server can shut down
// without waiting for browsers to hang up. Browsers reconnect by
// themselves when gnld is back.
func (h *Hub) Close() { h.closing.Do(func() { close(h.done) }) }

// SetModel names a new model in service (after a model swap).
func (h *Hub) SetModel(m Model) { h.model.Store(&m) }

// Camera adds a camera; drift may be nil (no drift monitor). Call it
// before Register.
func (h *Hub) Camera(name string, drift DriftSource) *Camera {
	c := &Camera{hub: h, name: name, drift: drift, hist: newHistory(int(h.opt.History / time.Second))}
	h.cams = append(h.cams, c)
	h.byName[name] = c
	return c
}

// watched reports whether a browser is looking now.
func (h *Hub) watched() bool {
	p := h.polled.Load()
	return h.streams.Load() > 0 || p != 0 && time.Duration(h.clock()-p) < h.opt.Grace
}

// clock is the time since New on the monotonic clock, in nanoseconds (at
// least 1): a wall clock set back must not keep the page "watched".
func (h *Hub) clock() int64 { return int64(time.Since(h.start)) + 1 }

// Camera is one camera's live state.
type Camera struct {
	hub   *Hub
	name  string
	drift DriftSource

	mu        sync.Mutex // guards the fields below (worker writes, handlers read)
	hist      history
	seq       uint64
	at        time.Time
	score     float32
	threshold float32
	anomalous bool
	normal    uint64
	anomalies uint64

	lastKept     time.Time // worker only
	snap, before atomic.Pointer[snapshot]
	model        atomic.Pointer[cameraModel] // nil: the hub's
}

type cameraModel struct {
	model   Model
	product string
}

// SetModel names the model the camera scores with (its own, or its
// product's: product, "" without one), after a model swap or a product
// changeover.
func (c *Camera) SetModel(m Model, product string) { c.model.Store(&cameraModel{m, product}) }

// Observe records one scored frame. Call it from the camera's worker,
// with the frame the pipeline scored and its result; neither is kept.
func (c *Camera) Observe(frame gocv.Mat, seq uint64, at time.Time, res pipeline.Result) {
	c.mu.Lock()
	c.hist.add(at.Unix(), res.Score, res.Anomalous)
	c.seq, c.at, c.score, c.threshold, c.anomalous = seq, at, res.Score, res.Threshold, res.Anomalous
	if res.Anomalous {
		c.anomalies++
	} else {
		c.normal++
	}
	c.mu.Unlock()
	if !c.hub.watched() || time.Since(c.lastKept) < c.hub.opt.FrameEvery {
		return
	}
	s, err := newSnapshot(frame, seq, res, c.hub.opt.FrameWidth)
	if err != nil {
		return // an unusable frame: the page keeps the previous one
	}
	c.lastKept = time.Now()
	c.before.Store(c.snap.Swap(s))
}

// snapshot is a kept frame: the frame downscaled and the map, as copies.
// Its images are encoded on first request.
type snapshot struct {
	seq       uint64
	threshold float32
	frame     []byte // 8-bit BGR, fw x fh
	fw, fh    int
	amap      []float32 // anomaly map, mw x mh
	mw, mh    int

	jpegOnce, pngOnce sync.Once
	jpeg, png         []byte
	jpegErr, pngErr   error
}

func newSnapshot(frame gocv.Mat, seq uint64, res pipeline.Result, width int) (*snapshot, error) {
	if frame.Empty() || frame.Type() != gocv.MatTypeCV8UC3 || len(res.Map) != res.MapW*res.MapH {
		return nil, fmt.Errorf("web: unusable frame or map")
	}
	w, h := frame.Cols(), frame.Rows()
	if k := float64(width) / float64(max(w, h)); k < 1 {
		w, h = max(int(float64(w)*k+0.5), 1), max(int(float64(h)*k+0.5), 1)
	}
	small := gocv.NewMat()
	defer small.Close()
	gocv.Resize(frame, &small, image.Pt(w, h), 0, 0, gocv.InterpolationArea)
	return &snapshot{
		seq: seq, threshold: res.Threshold, frame: small.ToBytes(), fw: w, fh: h,
		amap: append([]float32(nil), res.Map...), mw: res.MapW, mh: res.MapH,
	}, nil
}

// frameJPEG is the kept frame as a JPEG.
func (s *snapshot) frameJPEG() ([]byte, error) {
	s.jpegOnce.Do(func() {
		m, err := gocv.NewMatFromBytes(s.fh, s.fw, gocv.MatTypeCV8UC3, s.frame)
		if err != nil {
			s.jpegErr = err
			return
		}
		defer m.Close()
		buf, err := gocv.IMEncodeWithParams(gocv.JPEGFileExt, m, []int{gocv.IMWriteJpegQuality, 85})
		if err != nil {
			s.jpegErr = err
			return
		}
		defer buf.Close()
		s.jpeg = append([]byte(nil), buf.GetBytes()...)
	})
	return s.jpeg, s.jpegErr
}

// heatmapPNG is the map in the JET colours of gnld's heatmaps
// (pipeline.MapTo8: mid-scale at the threshold), at the map's size, with
// an alpha channel so that the page can lay it over the frame: clear up
// to half the threshold, half opaque at the threshold, opaque from one
// and a half times it.
func (s *snapshot) heatmapPNG() ([]byte, error) {
	s.pngOnce.Do(func() {
		grey8 := make([]byte, len(s.amap))
		pipeline.MapTo8(grey8, s.amap, s.threshold)
		grey, err := gocv.NewMatFromBytes(s.mh, s.mw, gocv.MatTypeCV8U, grey8)
		if err != nil {
			s.pngErr = err
			return
		}
		defer grey.Close()
		colour, bgra := gocv.NewMat(), gocv.NewMat()
		defer colour.Close()
		defer bgra.Close()
		gocv.ApplyColorMap(grey, &colour, gocv.ColormapJet)
		gocv.CvtColor(colour, &bgra, gocv.ColorBGRToBGRA)
		px, err := bgra.DataPtrUint8()
		if err != nil {
			s.pngErr = err
			return
		}
		for i, v := range grey8 {
			px[4*i+3] = byte(min(max(2*(int(v)-64), 0), 255))
		}
		buf, err := gocv.IMEncode(gocv.PNGFileExt, bgra)
		if err != nil {
			s.pngErr = err
			return
		}
		defer buf.Close()
		s.png = append([]byte(nil), buf.GetBytes()...)
	})
	return s.png, s.pngErr
}

// Register adds the page's routes to mux: the page at /, its API under
// /api/.
func (h *Hub) Register(mux *http.ServeMux) {
	static, _ := fs.Sub(page, "page")
	files := http.FileServerFS(static)
	mux.Handle("GET /{$}", files)
	mux.Handle("GET /page/", http.StripPrefix("/page/", files))
	mux.HandleFunc("GET /api/state", h.serveState)
	mux.HandleFunc("GET /api/events", h.serveEvents)
	mux.HandleFunc("GET /api/cameras/{name}/frame.jpg", h.serveImage(true))
	mux.HandleFunc("GET /api/cameras/{name}/heatmap.png", h.serveImage(false))
}

// State is what the page shows, as JSON (/api/state and the first event).
type State struct {
	Model   Model         `json:"model"`
	Device  string        `json:"device"`
	Site    string        `json:"site"`
	Started time.Time     `json:"started"`
	History int           `json:"history_seconds"`
	Cameras []CameraState `json:"cameras"`
}

// CameraState is one camera's part of State, and the payload of a
// "camera" event (whose History has only the buckets since the last one).
type CameraState struct {
	Name      string        `json:"name"`
	Now       float64       `json:"now"` // gnld's clock, Unix seconds: the page plots against it
	Seq       uint64        `json:"seq"` // last scored frame; 0: none yet
	Time      *time.Time    `json:"time,omitempty"`
	Score     float64       `json:"score"`
	Threshold float64       `json:"threshold"`
	Verdict   string        `json:"verdict,omitempty"`
	Normal    uint64        `json:"normal"`
	Anomalous uint64        `json:"anomalous"`
	FrameSeq  uint64        `json:"frame_seq"`         // newest kept frame (frame.jpg, heatmap.png); 0: none
	Drift     *drift.Status `json:"drift"`             // null: drift monitor off
	Model     *Model        `json:"model,omitempty"`   // the camera's model, when set (SetModel)
	Product   string        `json:"product,omitempty"` // the product it serves (GNLD_MODEL_ROOT)
	History   [][4]float64  `json:"history"`           // [unix second, max score, frames, anomalous]
}

func (c *Camera) state(from int64) CameraState {
	c.mu.Lock()
	s := CameraState{
		Name: c.name, Now: float64(time.Now().UnixMilli()) / 1000, Seq: c.seq, Score: round4(c.score), Threshold: round4(c.threshold),
		Normal: c.normal, Anomalous: c.anomalies, History: c.hist.since(from),
	}
	if c.seq > 0 {
		at := c.at.UTC()
		s.Time = &at
		s.Verdict = "normal"
		if c.anomalous {
			s.Verdict = "anomalous"
		}
	}
	c.mu.Unlock()
	if snap := c.snap.Load(); snap != nil {
		s.FrameSeq = snap.seq
	}
	if c.drift != nil {
		s.Drift = c.drift()
	}
	if m := c.model.Load(); m != nil {
		s.Model, s.Product = &m.model, m.product
	}
	return s
}

func (h *Hub) state() State {
	from := time.Now().Add(-h.opt.History).Unix()
	st := State{Model: *h.model.Load(), Device: h.opt.Device, Site: h.opt.Site, Started: h.start.UTC(),
		History: int(h.opt.History / time.Second), Cameras: make([]CameraState, 0, len(h.cams))}
	for _, c := range h.cams {
		st.Cameras = append(st.Cameras, c.state(from))
	}
	return st
}

func (h *Hub) serveState(w http.ResponseWriter, r *http.Request) {
	h.polled.Store(h.clock())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(h.state())
}

// serveEvents streams server-sent events: first "state" (everything),
// then a "camera" event whenever a camera has news, checked every Tick;
// a comment every 15 s keeps proxies from closing an idle stream.
func (h *Hub) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	h.streams.Add(1)
	defer h.streams.Add(-1)

	send := func(event string, v any) error {
		b, _ := json.Marshal(v) // plain structs: cannot fail
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	st := h.state()
	if send("state", st) != nil {
		return
	}
	type seen struct{ seq, frame, drift uint64 }
	last := make([]seen, len(h.cams))
	sent := make([]int64, len(h.cams)) // newest history second sent
	for i, c := range st.Cameras {
		last[i] = seen{c.Seq, c.FrameSeq, driftSamples(c.Drift)}
		if n := len(c.History); n > 0 {
			sent[i] = int64(c.History[n-1][0])
		}
	}
	tick := time.NewTicker(h.opt.Tick)
	defer tick.Stop()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.done:
			return
		case <-ping.C:
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-tick.C:
			for i, c := range h.cams {
				cs := c.state(sent[i]) // the last bucket sent may have grown
				now := seen{cs.Seq, cs.FrameSeq, driftSamples(cs.Drift)}
				if now == last[i] {
					continue
				}
				last[i] = now
				if n := len(cs.History); n > 0 {
					sent[i] = int64(cs.History[n-1][0])
				}
				if send("camera", cs) != nil {
					return
				}
			}
		}
	}
}

func driftSamples(s *drift.Status) uint64 {
	if s == nil {
		return 0
	}
	return s.Samples
}

// serveImage serves a kept frame (jpeg) or its heatmap. ?seq=N asks for
// frame N, which is served while it is one of the last two kept; else the
// newest. X-Frame-Seq says which one came.
func (h *Hub) serveImage(jpeg bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h.polled.Store(h.clock())
		c := h.byName[r.PathValue("name")]
		if c == nil {
			http.Error(w, "no camera "+strconv.Quote(r.PathValue("name"))+"; see /api/state for the cameras", http.StatusNotFound)
			return
		}
		s := c.snap.Load()
		if want, err := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64); err == nil && s != nil && s.seq != want {
			if b := c.before.Load(); b != nil && b.seq == want {
				s = b
			}
		}
		if s == nil {
			http.Error(w, "no frame kept yet: frames are kept while a browser watches; try again in a moment", http.StatusNotFound)
			return
		}
		body, kind, err := []byte(nil), "", error(nil)
		if jpeg {
			body, err = s.frameJPEG()
			kind = "image/jpeg"
		} else {
			body, err = s.heatmapPNG()
			kind = "image/png"
		}
		if err != nil {
			http.Error(w, "encoding the image: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", kind)
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Frame-Seq", strconv.FormatUint(s.seq, 10))
		w.Write(body)
	}
}
