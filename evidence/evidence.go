// Package evidence is the on-device store of scored frames that a
// technician reviews later: every anomalous result, and every Nth normal
// one per camera, kept with its frame (after ROI and rotation, at full
// resolution, as a JPEG), its heat map (a PNG) and its result JSON,
// findable by camera, time, verdict, part id and mark. A technician marks
// a record "false alarm" or "defect confirmed"; gnlctl exports a time
// range or a part id as a folder of images.
//
// On disk: Dir/<camera>/<yyyy-mm-dd>/<id>.jpg, .png and .json (the UTC
// date). The .json is written last, to a temporary name that is synced
// and renamed into place, so it marks a complete record: Open rebuilds the
// index from the .json files alone and removes what a write cut short.
//
// Bounds: Config.MaxBytes, the real sizes of all the files under Dir, and
// Config.MaxAge. Before each write the store removes the oldest records
// until the new one fits, so Dir never holds more than MaxBytes; records
// past MaxAge go at each write and every minute. Marked records are
// removed like the others (the storage is bounded); every removal is
// counted (Stats.Removed).
//
// Cost on the inference path: the camera's worker calls Offer after every
// scored frame. For a frame that is not kept that is a mutex and a
// counter; for a kept one, a copy of the frame (into a Mat, outside Go's
// heap, reused once written) and of the map, and a send on a bounded
// queue. Offer never blocks and never encodes: with the queue full it
// drops the record and counts it. One writer goroutine encodes the JPEG
// and the PNG, writes the files and enforces the bounds. A failed write (a full disk) is counted and
// logged, and the store carries on. Memory: up to Config.Queue frames
// wait in the queue, and two more are kept for reuse.
//
// Lifecycle: Open (rebuilds the index, starts the writer); Offer from
// each camera's worker; List, Get, FramePath, HeatmapPath, Mark, Export
// and Stats from any goroutine (the HTTP handlers, gnlctl); Close once the
// cameras have stopped: it writes what is queued and stops the writer.
// Offer after Close drops.
package evidence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gocv.io/x/gocv"

	"gnld/pipeline"
)

// Config sets up a Store.
type Config struct {
	Dir      string        // root folder, created if missing (0750)
	MaxBytes int64         // bound on the size of all the files under Dir; required, above 0
	MaxAge   time.Duration // records older than this are removed; 0: no age bound
	// NormalEvery keeps every Nth normal result per camera; 0 keeps none.
	// Anomalous results are always kept.
	NormalEvery int
	// Queue is how many records may wait for the writer; default 16. Each
	// holds a copy of its frame. When it is full, Offer drops and counts.
	Queue int
	// ReadOnly opens a store that another process (gnld) writes, for
	// List, Get, the paths and Export (gnlctl export): Open removes
	// nothing and needs no MaxBytes, Offer keeps nothing, Mark fails.
	ReadOnly bool
}

// Record is one kept result, stored as <id>.json and served as such by
// the HTTP API.
type Record struct {
	// ID is assigned by the store: <camera>-<UTC yyyymmddThhmmss.mmm>-<seq>
	// (with a -N suffix in the rare case that it is taken).
	ID        string          `json:"id"`
	Camera    string          `json:"camera"`
	Time      time.Time       `json:"time"` // capture time; stored in UTC; zero: when offered
	Seq       uint64          `json:"seq"`
	PartID    string          `json:"part_id,omitempty"`
	Anomalous bool            `json:"anomalous"`
	Score     float64         `json:"score"`
	Threshold float64         `json:"threshold"`
	Model     string          `json:"model"` // version of the bundle that scored it
	Product   string          `json:"product,omitempty"`
	Drift     string          `json:"drift,omitempty"`  // drift state at the time: "ok", "warning"
	Result    json.RawMessage `json:"result,omitempty"` // the published result JSON, verbatim
	Mark      *Mark           `json:"mark,omitempty"`   // set by Store.Mark only
}

// Mark kinds.
const (
	MarkFalseAlarm = "false_alarm"
	MarkDefect     = "defect" // defect confirmed
)

// Mark is a technician's verdict on a record.
type Mark struct {
	Kind string    `json:"kind"` // MarkFalseAlarm or MarkDefect
	By   string    `json:"by"`   // who marked it; required
	At   time.Time `json:"at"`   // when; zero: now
	Note string    `json:"note,omitempty"`
}

// Stats are the store's counters since Open and its size now.
type Stats struct {
	Kept     uint64 // queued by Offer
	Dropped  uint64 // not queued: the queue was full, or the store closed
	Rejected uint64 // not kept: an invalid camera name, an unusable frame or map, one record larger than MaxBytes, or ReadOnly
	// Removed counts records removed to stay within MaxBytes and MaxAge
	// (Open's included), and those offered already older than MaxAge.
	Removed     uint64
	WriteErrors uint64 // records not written: an encoding or file error (a full disk)
	Queued      int    // records waiting for the writer or being written
	Records     int    // records on disk
	Bytes       int64  // size of the files under Dir
}

// Errors that the HTTP API maps to 400 and 404.
var (
	ErrInvalid  = errors.New("evidence: invalid")
	ErrNotFound = errors.New("evidence: no such record")
)

// Store is the evidence store. Its methods are safe for concurrent use.
type Store struct {
	cfg Config
	log *slog.Logger

	closeMu sync.RWMutex // Offer holds it for reading, Close for writing
	closed  bool
	queue   chan item
	done    chan struct{} // closed when the writer has stopped

	normalMu sync.Mutex
	normals  map[string]uint64 // normal results offered, per camera
	frames   chan gocv.Mat     // frame copies, back from the writer (a few)
	maps     sync.Pool         // *[]float32: map copies, back from the writer

	kept, dropped, rejected, removed, writeErrors atomic.Uint64
	pending                                       atomic.Int64 // queued or being written

	mu    sync.Mutex // guards the index: recs, byID, bytes and the entries' rec and sizes
	recs  []*entry   // oldest first (Time, then ID)
	byID  map[string]*entry
	bytes int64 // files under Dir (the store's and others), plus a write's reservation

	// the writer's only
	lastErrLog   time.Time
	errsAtLog    uint64
	droppedAtLog uint64
}

// item is a record waiting for the writer, with copies of its images.
type item struct {
	rec    Record
	frame  gocv.Mat   // a copy; the writer releases it
	amap   *[]float32 // nil: no map
	mw, mh int
}

// Open opens the store in cfg.Dir (creating it), rebuilds the index from
// the .json files there (removing corrupt ones and leftovers of cut-short
// writes), applies the bounds and starts the writer. log may be nil.
func Open(cfg Config, log *slog.Logger) (*Store, error) {
	switch {
	case cfg.Dir == "":
		return nil, fmt.Errorf("%w config: Dir is empty", ErrInvalid)
	case cfg.MaxBytes <= 0 && !cfg.ReadOnly:
		return nil, fmt.Errorf("%w config: MaxBytes %d, want above 0", ErrInvalid, cfg.MaxBytes)
	case cfg.MaxAge < 0 || cfg.NormalEvery < 0 || cfg.Queue < 0:
		return nil, fmt.Errorf("%w config: MaxAge, NormalEvery and Queue must not be negative", ErrInvalid)
	}
	if cfg.Queue == 0 {
		cfg.Queue = 16
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !cfg.ReadOnly {
		if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("evidence: %w", err)
		}
	}
	s := &Store{
		cfg: cfg, log: log, queue: make(chan item, cfg.Queue), done: make(chan struct{}),
		normals: map[string]uint64{}, frames: make(chan gocv.Mat, 2), byID: map[string]*entry{},
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	if cfg.ReadOnly {
		close(s.done) // no writer
		return s, nil
	}
	s.removeFiles(s.prune(0, nil), "open")
	go s.run()
	return s, nil
}

// Offer keeps a scored frame if it is anomalous, or the NormalEvery-th
// normal one of its camera: it copies frame (8-bit BGR or grey, any size;
// it must be a valid Mat) and amap (mapW x mapH, row-major; may be nil
// with 0 x 0 for no heat map) and queues them for the writer. rec's ID
// and Mark are set by the store. Call it from the camera's worker; it
// never blocks and never encodes. It reports whether the record was
// queued.
func (s *Store) Offer(rec Record, frame gocv.Mat, amap []float32, mapW, mapH int) bool {
	if t := frame.Type(); s.cfg.ReadOnly || !ValidCamera(rec.Camera) || frame.Empty() || t != gocv.MatTypeCV8UC3 && t != gocv.MatTypeCV8UC1 ||
		mapW < 0 || mapH < 0 || len(amap) != mapW*mapH {
		s.rejected.Add(1)
		return false
	}
	if !rec.Anomalous && !s.sampled(rec.Camera) {
		return false
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed || len(s.queue) == cap(s.queue) { // before copying anything
		s.dropped.Add(1)
		return false
	}
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.ID, rec.Mark, rec.Result = "", nil, bytes.Clone(rec.Result)
	it := item{rec: rec, frame: s.frameBuffer(), mw: mapW, mh: mapH}
	frame.CopyTo(&it.frame)
	if len(amap) > 0 {
		it.amap = s.mapBuffer(len(amap))
		copy(*it.amap, amap)
	}
	s.pending.Add(1)
	select {
	case s.queue <- it:
		s.kept.Add(1)
		return true
	default: // another camera filled the queue meanwhile
		s.pending.Add(-1)
		s.release(it)
		s.dropped.Add(1)
		return false
	}
}

// sampled counts a normal result of camera and says whether it is the
// NormalEvery-th.
func (s *Store) sampled(camera string) bool {
	if s.cfg.NormalEvery <= 0 {
		return false
	}
	s.normalMu.Lock()
	n := s.normals[camera] + 1
	s.normals[camera] = n
	s.normalMu.Unlock()
	return n%uint64(s.cfg.NormalEvery) == 0
}

func (s *Store) mapBuffer(n int) *[]float32 {
	p, _ := s.maps.Get().(*[]float32)
	if p == nil || cap(*p) < n {
		b := make([]float32, n)
		return &b
	}
	*p = (*p)[:n]
	return p
}

// frameBuffer is a Mat to copy a frame into: one the writer is done
// with, whose memory is mapped already (a fresh one costs page faults).
func (s *Store) frameBuffer() gocv.Mat {
	select {
	case m := <-s.frames:
		return m
	default:
		return gocv.NewMat()
	}
}

// release frees an item's copies, or keeps them for the next.
func (s *Store) release(it item) {
	select {
	case s.frames <- it.frame:
	default:
		it.frame.Close()
	}
	if it.amap != nil {
		s.maps.Put(it.amap)
	}
}

// Close writes what is queued and stops the writer. Later calls do
// nothing.
func (s *Store) Close() error {
	s.closeMu.Lock()
	first := !s.closed
	if first {
		s.closed = true
		close(s.queue)
	}
	s.closeMu.Unlock()
	<-s.done
	if first {
		for len(s.frames) > 0 { // no Offer can take one now
			m := <-s.frames
			m.Close()
		}
		st := s.Stats()
		s.log.Info("evidence: closed", "dir", s.cfg.Dir, "kept", st.Kept, "dropped", st.Dropped,
			"rejected", st.Rejected, "removed", st.Removed, "write_errors", st.WriteErrors,
			"records", st.Records, "bytes", st.Bytes)
	}
	return nil
}

// Stats returns the counters and the size now.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	n, b := len(s.recs), s.bytes
	s.mu.Unlock()
	return Stats{
		Kept: s.kept.Load(), Dropped: s.dropped.Load(), Rejected: s.rejected.Load(),
		Removed: s.removed.Load(), WriteErrors: s.writeErrors.Load(), Queued: int(s.pending.Load()),
		Records: n, Bytes: b,
	}
}

// run is the writer: it writes the queued records until Close, and
// applies the age bound every minute.
func (s *Store) run() {
	defer close(s.done)
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case it, ok := <-s.queue:
			if !ok {
				return
			}
			s.write(it)
			s.pending.Add(-1)
		case <-tick.C:
			s.removeFiles(s.prune(0, nil), "age check")
			if d := s.dropped.Load(); d > s.droppedAtLog {
				s.log.Warn("evidence: queue full, records dropped", "dropped", d-s.droppedAtLog, "queue", cap(s.queue))
				s.droppedAtLog = d
			}
		}
	}
}

// write encodes and writes one record, making room for it first.
func (s *Store) write(it item) {
	defer s.release(it)
	rec := it.rec
	rec.Time = rec.Time.UTC()
	if s.expired(rec.Time, time.Now()) {
		s.removed.Add(1)
		return
	}
	if len(rec.Result) > 0 { // compact, as it reads back; not JSON: kept as a string
		var b bytes.Buffer
		if json.Compact(&b, rec.Result) == nil {
			rec.Result = b.Bytes()
		} else {
			rec.Result, _ = json.Marshal(string(rec.Result))
		}
	}
	jpg, err := encode(it.frame, gocv.JPEGFileExt, []int{gocv.IMWriteJpegQuality, 90})
	if err != nil {
		s.writeFailed(rec, fmt.Errorf("frame: %w", err))
		return
	}
	var png []byte
	if it.amap != nil && rec.Threshold > 0 && !math.IsInf(rec.Threshold, 0) {
		if png, err = heatmapPNG(*it.amap, it.mw, it.mh, rec.Threshold); err != nil {
			s.writeFailed(rec, fmt.Errorf("heat map: %w", err))
			return
		}
	}
	rec.ID = s.newID(rec)
	js, err := marshal(rec)
	if err != nil {
		s.writeFailed(rec, err)
		return
	}
	e := &entry{rec: rec, dir: dayDir(s.cfg.Dir, rec), hasPNG: png != nil, jsonSize: int64(len(js))}
	e.size = int64(len(jpg)+len(png)) + e.jsonSize
	if e.size > s.cfg.MaxBytes {
		s.rejected.Add(1)
		s.log.Warn("evidence: record larger than the store", "id", rec.ID, "bytes", e.size, "max_bytes", s.cfg.MaxBytes)
		return
	}
	victims, ok := s.reserve(e.size)
	s.removeFiles(victims, "write")
	if !ok {
		s.writeFailed(rec, fmt.Errorf("no room: other files under %s take %d of %d bytes", s.cfg.Dir, s.Stats().Bytes, s.cfg.MaxBytes))
		return
	}
	if err := e.writeFiles(jpg, png, js); err != nil {
		s.mu.Lock()
		s.bytes -= e.size
		s.mu.Unlock()
		s.writeFailed(rec, err)
		return
	}
	s.mu.Lock()
	s.insert(e)
	s.mu.Unlock()
}

// writeFailed counts a record not written and logs it, one line a minute
// at most.
func (s *Store) writeFailed(rec Record, err error) {
	n := s.writeErrors.Add(1)
	if time.Since(s.lastErrLog) < time.Minute {
		return
	}
	s.log.Warn("evidence: write failed", "camera", rec.Camera, "seq", rec.Seq, "err", err,
		"write_errors", n-s.errsAtLog)
	s.lastErrLog, s.errsAtLog = time.Now(), n
}

// newID is rec's ID, unique in the index. The writer is the only one
// that adds records, so it stays unique until inserted.
func (s *Store) newID(rec Record) string {
	id := rec.Camera + "-" + rec.Time.Format("20060102T150405.000") + "-" + strconv.FormatUint(rec.Seq, 10)
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, try := 2, id; ; n++ {
		if s.byID[try] == nil {
			return try
		}
		try = id + "-" + strconv.Itoa(n)
	}
}

func marshal(rec Record) ([]byte, error) {
	js, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", rec.ID, err)
	}
	return append(js, '\n'), nil
}

// encode is m as an image file's bytes.
func encode(m gocv.Mat, ext gocv.FileExt, params []int) ([]byte, error) {
	var buf *gocv.NativeByteBuffer
	var err error
	if params == nil {
		buf, err = gocv.IMEncode(ext, m)
	} else {
		buf, err = gocv.IMEncodeWithParams(ext, m, params)
	}
	if err != nil {
		return nil, err
	}
	defer buf.Close()
	return bytes.Clone(buf.GetBytes()), nil
}

// heatmapPNG is the map in the JET colours of gnld's heatmaps
// (pipeline.MapTo8: mid-scale at the threshold), at the map's size, with
// an alpha channel for laying it over the frame, as on the technicians'
// page: clear up to half the threshold, half opaque at the threshold,
// opaque from one and a half times it.
func heatmapPNG(m []float32, w, h int, threshold float64) ([]byte, error) {
	grey8 := make([]byte, len(m))
	pipeline.MapTo8(grey8, m, float32(threshold))
	grey, err := gocv.NewMatFromBytes(h, w, gocv.MatTypeCV8U, grey8)
	if err != nil {
		return nil, err
	}
	defer grey.Close()
	colour, bgra := gocv.NewMat(), gocv.NewMat()
	defer colour.Close()
	defer bgra.Close()
	gocv.ApplyColorMap(grey, &colour, gocv.ColormapJet)
	gocv.CvtColor(colour, &bgra, gocv.ColorBGRToBGRA)
	px, err := bgra.DataPtrUint8()
	if err != nil {
		return nil, err
	}
	for i, v := range grey8 {
		px[4*i+3] = byte(min(max(2*(int(v)-64), 0), 255))
	}
	return encode(bgra, gocv.PNGFileExt, nil)
}

// ValidCamera reports whether name can name a camera in the store: 1 to
// 128 letters, digits, '-' and '_'.
func ValidCamera(name string) bool {
	if len(name) == 0 || len(name) > 128 {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validID reports whether id can be a record's ID: 1 to 200 letters,
// digits, '-', '_' and '.', not starting with '.'. Nothing else reaches a
// path.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 200 || id[0] == '.' {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
