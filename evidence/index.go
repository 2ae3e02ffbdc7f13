package evidence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// entry is a record in the index: the record and where its files are.
// dir and hasPNG never change; rec, size and jsonSize change under
// Store.mu (Mark).
type entry struct {
	rec      Record
	dir      string // Dir/<camera>/<yyyy-mm-dd>
	hasPNG   bool
	size     int64 // of its files
	jsonSize int64
}

func (e *entry) path(ext string) string { return filepath.Join(e.dir, e.rec.ID+ext) }

// dayDir is the folder rec's files go in.
func dayDir(root string, rec Record) string {
	return filepath.Join(root, rec.Camera, rec.Time.Format("2006-01-02"))
}

// writeFiles writes the record's files, the .json last: on an error none
// is left.
func (e *entry) writeFiles(jpg, png, js []byte) (err error) {
	if err := os.MkdirAll(e.dir, 0o750); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			e.removeFiles()
		}
	}()
	if err := os.WriteFile(e.path(".jpg"), jpg, 0o640); err != nil {
		return err
	}
	if png != nil {
		if err := os.WriteFile(e.path(".png"), png, 0o640); err != nil {
			return err
		}
	}
	return writeAtomic(e.path(".json"), js)
}

// removeFiles removes the record's files, the .json first.
func (e *entry) removeFiles() error {
	var errs []error
	for _, ext := range []string{".json", ".jpg", ".png"} {
		if err := os.Remove(e.path(ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeAtomic writes data to path through a synced temporary file, so
// that path holds either its old content or data, even after a power cut.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// before orders the index: by time, then ID.
func before(a, b *entry) int {
	if c := a.rec.Time.Compare(b.rec.Time); c != 0 {
		return c
	}
	return strings.Compare(a.rec.ID, b.rec.ID)
}

// insert adds e to the index (its bytes were reserved). mu held.
func (s *Store) insert(e *entry) {
	i, _ := slices.BinarySearchFunc(s.recs, e, before) // at the end, but for a clock set back
	s.recs = slices.Insert(s.recs, i, e)
	s.byID[e.rec.ID] = e
}

func (s *Store) expired(t, now time.Time) bool {
	return s.cfg.MaxAge > 0 && now.Sub(t) > s.cfg.MaxAge
}

// reserve makes room for size more bytes (prune) and reserves them. It
// returns the records pruned, for removeFiles, and false if size does not
// fit (files that are not the store's take the room).
func (s *Store) reserve(size int64) ([]*entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	victims := s.pruneLocked(size, nil)
	if s.bytes+size > s.cfg.MaxBytes {
		return victims, false
	}
	s.bytes += size
	return victims, true
}

func (s *Store) prune(need int64, keep *entry) []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pruneLocked(need, keep)
}

// pruneLocked takes out of the index, oldest first, the records past
// MaxAge and as many more as it takes for need bytes to fit within
// MaxBytes, keep aside. It returns them for removeFiles. mu held.
func (s *Store) pruneLocked(need int64, keep *entry) []*entry {
	now := time.Now()
	var victims []*entry
	left := s.recs[:0]
	for i, e := range s.recs {
		over, old := s.bytes+need > s.cfg.MaxBytes, s.expired(e.rec.Time, now)
		if e != keep && (over || old) {
			victims = append(victims, e)
			s.bytes -= e.size
			delete(s.byID, e.rec.ID)
			continue
		}
		if !over && !old { // the rest are newer
			left = append(left, s.recs[i:]...)
			break
		}
		left = append(left, e)
	}
	clear(s.recs[len(left):])
	s.recs = left
	return victims
}

// removeFiles removes the files of records taken out of the index, counts
// them and logs the marked ones, once per batch. Only the writer removes
// the folders they leave empty (it might be writing into one).
func (s *Store) removeFiles(victims []*entry, why string) {
	if len(victims) == 0 {
		return
	}
	s.removed.Add(uint64(len(victims)))
	var marked []string
	var errs []error
	for _, e := range victims {
		if e.rec.Mark != nil {
			marked = append(marked, e.rec.ID)
		}
		if err := e.removeFiles(); err != nil {
			errs = append(errs, err)
		}
		if why != "mark" && os.Remove(e.dir) == nil {
			os.Remove(filepath.Dir(e.dir)) // the camera's, if that was its last day
		}
	}
	if len(marked) > 0 {
		s.log.Info("evidence: marked records removed to stay within the bounds", "why", why,
			"marked", len(marked), "removed", len(victims), "ids", marked[:min(len(marked), 10)])
	}
	if len(errs) > 0 {
		s.log.Warn("evidence: removing records", "why", why, "failed", len(errs), "err", errs[0])
	}
}

// load builds the index from the files under Dir: a record is a valid
// <id>.json with its <id>.jpg (and maybe <id>.png) in Dir/<camera>/<day>/.
// Corrupt .json files, files of a write cut short and images without a
// record are removed; other files count towards the size.
func (s *Store) load() error {
	remove := func(path string) { // not while another process writes
		if !s.cfg.ReadOnly {
			os.Remove(path)
		}
	}
	media := map[string]int64{} // .jpg and .png at record depth: path -> size
	var dirs []string
	var corrupt []string
	err := filepath.WalkDir(s.cfg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.cfg.Dir, path)
		depth := strings.Count(rel, string(filepath.Separator))
		if d.IsDir() {
			if rel != "." && depth < 2 {
				dirs = append(dirs, path)
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		name := d.Name()
		switch {
		case depth != 2 || !d.Type().IsRegular():
			s.bytes += info.Size() // not the store's
		case strings.HasSuffix(name, ".tmp"):
			remove(path)
		case strings.HasSuffix(name, ".json"):
			e, err := loadEntry(path, info.Size())
			if err == nil && s.byID[e.rec.ID] != nil {
				err = fmt.Errorf("%s is also in %s", e.rec.ID, s.byID[e.rec.ID].dir)
			}
			if err != nil {
				s.log.Warn("evidence: corrupt record", "path", path, "err", err, "removed", !s.cfg.ReadOnly)
				remove(path)
				corrupt = append(corrupt, path)
				return nil
			}
			s.byID[e.rec.ID] = e
			s.recs = append(s.recs, e)
		case strings.HasSuffix(name, ".jpg") || strings.HasSuffix(name, ".png"):
			media[path] = info.Size()
		default:
			s.bytes += info.Size()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	for _, e := range s.recs { // find each record's images
		jpg, ok := media[e.path(".jpg")]
		if !ok {
			s.log.Warn("evidence: record without its frame", "path", e.path(".json"), "removed", !s.cfg.ReadOnly)
			remove(e.path(".json"))
			corrupt = append(corrupt, e.path(".json"))
			delete(s.byID, e.rec.ID)
			continue
		}
		png, hasPNG := media[e.path(".png")]
		delete(media, e.path(".jpg"))
		delete(media, e.path(".png"))
		e.hasPNG, e.size = hasPNG, e.jsonSize+jpg+png
	}
	s.recs = slices.DeleteFunc(s.recs, func(e *entry) bool { return s.byID[e.rec.ID] != e })
	for path := range media { // images of a write cut short, or of a corrupt record
		remove(path)
	}
	for _, d := range slices.Backward(dirs) { // days before cameras; fails unless empty
		remove(d)
	}
	slices.SortFunc(s.recs, before)
	for _, e := range s.recs {
		s.bytes += e.size
	}
	s.log.Info("evidence: opened", "dir", s.cfg.Dir, "records", len(s.recs), "bytes", s.bytes,
		"max_bytes", s.cfg.MaxBytes, "corrupt", len(corrupt), "orphans", len(media), "read_only", s.cfg.ReadOnly)
	return nil
}

// loadEntry reads a record's .json.
func loadEntry(path string, size int64) (*entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, err
	}
	switch name := strings.TrimSuffix(filepath.Base(path), ".json"); {
	case rec.ID != name || !validID(rec.ID):
		return nil, fmt.Errorf("id %q in file %s.json", rec.ID, name)
	case !ValidCamera(rec.Camera):
		return nil, fmt.Errorf("camera %q", rec.Camera)
	case rec.Time.IsZero():
		return nil, errors.New("no time")
	}
	return &entry{rec: rec, dir: filepath.Dir(path), jsonSize: size}, nil
}

// Query selects records. The zero Query selects all.
type Query struct {
	Camera   string    // "": all cameras
	From, To time.Time // From <= Time < To; zero: unbounded
	Verdict  string    // "", "anomalous" or "normal"
	PartID   string    // "": any
	Marked   string    // "", MarkFalseAlarm, MarkDefect, "marked" (either) or "unmarked"
	Limit    int       // the newest Limit records; 0: all
}

// Check reports whether q is valid. List selects nothing with an invalid
// query; Export returns this error.
func (q Query) Check() error {
	switch {
	case q.Verdict != "" && q.Verdict != "anomalous" && q.Verdict != "normal":
		return fmt.Errorf("%w query: verdict %q, want anomalous or normal", ErrInvalid, q.Verdict)
	case q.Marked != "" && q.Marked != MarkFalseAlarm && q.Marked != MarkDefect && q.Marked != "marked" && q.Marked != "unmarked":
		return fmt.Errorf("%w query: marked %q, want false_alarm, defect, marked or unmarked", ErrInvalid, q.Marked)
	case q.Limit < 0:
		return fmt.Errorf("%w query: limit %d", ErrInvalid, q.Limit)
	}
	return nil
}

func (q Query) match(r *Record) bool {
	switch {
	case q.Camera != "" && r.Camera != q.Camera,
		!q.From.IsZero() && r.Time.Before(q.From),
		!q.To.IsZero() && !r.Time.Before(q.To),
		q.Verdict != "" && r.Anomalous != (q.Verdict == "anomalous"),
		q.PartID != "" && r.PartID != q.PartID:
		return false
	}
	switch q.Marked {
	case "":
		return true
	case "marked":
		return r.Mark != nil
	case "unmarked":
		return r.Mark == nil
	}
	return r.Mark != nil && r.Mark.Kind == q.Marked
}

// find is a copy of the entries q selects, newest first.
func (s *Store) find(q Query) []entry {
	if q.Check() != nil {
		return nil
	}
	var out []entry
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range slices.Backward(s.recs) {
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
		if q.match(&e.rec) {
			c := *e
			c.rec = e.rec.clone()
			out = append(out, c)
		}
	}
	return out
}

// clone is a deep copy of r.
func (r Record) clone() Record {
	r.Result = bytes.Clone(r.Result)
	if r.Mark != nil {
		m := *r.Mark
		r.Mark = &m
	}
	return r
}

// List returns the records q selects, newest first.
func (s *Store) List(q Query) []Record {
	found := s.find(q)
	out := make([]Record, len(found))
	for i, e := range found {
		out[i] = e.rec
	}
	return out
}

// Get returns the record id.
func (s *Store) Get(id string) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byID[id]
	if e == nil {
		return Record{}, false
	}
	return e.rec.clone(), true
}

// FramePath is the path of record id's frame, a JPEG. The store may
// remove it at any time (bounds): a reader must expect it gone.
func (s *Store) FramePath(id string) (string, error) { return s.file(id, ".jpg") }

// HeatmapPath is the path of record id's heat map, a PNG with alpha at
// the map's size, or ErrNotFound if it has none (no map, no threshold).
func (s *Store) HeatmapPath(id string) (string, error) { return s.file(id, ".png") }

func (s *Store) file(id, ext string) (string, error) {
	if !validID(id) {
		return "", fmt.Errorf("%w id %q", ErrInvalid, id)
	}
	s.mu.Lock()
	e := s.byID[id]
	s.mu.Unlock()
	switch {
	case e == nil:
		return "", fmt.Errorf("%w: %s", ErrNotFound, id)
	case ext == ".png" && !e.hasPNG:
		return "", fmt.Errorf("%w: %s has no heat map", ErrNotFound, id)
	}
	return e.path(ext), nil
}

// Mark stores a technician's mark on record id (replacing an earlier
// one) and returns the record. m.By is required; m.At defaults to now.
func (s *Store) Mark(id string, m Mark) (Record, error) {
	m.By = strings.TrimSpace(m.By)
	switch {
	case s.cfg.ReadOnly:
		return Record{}, fmt.Errorf("%w: the store is open read-only", ErrInvalid)
	case !validID(id):
		return Record{}, fmt.Errorf("%w id %q", ErrInvalid, id)
	case m.Kind != MarkFalseAlarm && m.Kind != MarkDefect:
		return Record{}, fmt.Errorf("%w mark %q, want false_alarm or defect", ErrInvalid, m.Kind)
	case m.By == "":
		return Record{}, fmt.Errorf("%w mark: who marked it is missing", ErrInvalid)
	}
	if m.At.IsZero() {
		m.At = time.Now()
	}
	m.At = m.At.UTC()
	s.mu.Lock()
	e := s.byID[id]
	if e == nil {
		s.mu.Unlock()
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	rec := e.rec
	rec.Mark = &m
	js, err := marshal(rec)
	if err == nil {
		err = writeAtomic(e.path(".json"), js)
	}
	if err != nil {
		s.mu.Unlock()
		return Record{}, fmt.Errorf("evidence: marking %s: %w", id, err)
	}
	grow := int64(len(js)) - e.jsonSize
	e.rec, e.jsonSize, e.size = rec, int64(len(js)), e.size+grow
	s.bytes += grow
	victims := s.pruneLocked(0, e) // a longer .json may not fit
	out := e.rec.clone()
	s.mu.Unlock()
	s.removeFiles(victims, "mark")
	return out, nil
}

// Export copies the records q selects into dir (created if missing; files
// of the same names are replaced) as a folder of images: <id>.jpg (the
// frame), <id>.png (the heat map), <id>.json (the record) and index.jsonl
// (the records, one a line, oldest first). Marked records' frames are
// also copied to dir/false_alarm/ and dir/defect/: the false alarms are
// good images for the next training (its train/good). It returns how many
// records it exported; records removed meanwhile are left out.
func (s *Store) Export(q Query, dir string) (int, error) {
	if err := q.Check(); err != nil {
		return 0, err
	}
	if within(dir, s.cfg.Dir) {
		return 0, fmt.Errorf("%w export folder %s: inside the store's %s", ErrInvalid, dir, s.cfg.Dir)
	}
	found := s.find(q)
	slices.Reverse(found)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, fmt.Errorf("evidence: export: %w", err)
	}
	var index bytes.Buffer
	n := 0
	for _, e := range found {
		js, err := marshal(e.rec)
		if err == nil {
			err = export(&e, dir, js)
		}
		if errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("evidence: export %s: %w", e.rec.ID, err)
		}
		index.Write(js)
		n++
	}
	if err := writeAtomic(filepath.Join(dir, "index.jsonl"), index.Bytes()); err != nil {
		return n, fmt.Errorf("evidence: export: %w", err)
	}
	return n, nil
}

var errGone = errors.New("removed meanwhile")

// within reports whether dir is root or inside it.
func within(dir, root string) bool {
	d, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	r, err := filepath.Abs(root)
	if err != nil {
		return false
	}
	rel, err := filepath.Rel(r, d)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// export copies one record's files into dir.
func export(e *entry, dir string, js []byte) error {
	dst := func(ext string) string { return filepath.Join(dir, e.rec.ID+ext) }
	copies := [][2]string{{e.path(".jpg"), dst(".jpg")}}
	if e.hasPNG {
		copies = append(copies, [2]string{e.path(".png"), dst(".png")})
	}
	if e.rec.Mark != nil {
		if err := os.MkdirAll(filepath.Join(dir, e.rec.Mark.Kind), 0o750); err != nil {
			return err
		}
		copies = append(copies, [2]string{e.path(".jpg"), filepath.Join(dir, e.rec.Mark.Kind, e.rec.ID+".jpg")})
	}
	for _, c := range copies {
		if err := copyFile(c[0], c[1]); err != nil {
			for _, c := range copies {
				os.Remove(c[1])
			}
			return err
		}
	}
	return os.WriteFile(dst(".json"), js, 0o640)
}

// copyFile copies src to dst; errGone if src is not there.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return errGone
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
