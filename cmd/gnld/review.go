package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"gocv.io/x/gocv"

	"gnld/capture"
	"gnld/evidence"
	"gnld/internal/auth"
	"gnld/pipeline"
	"gnld/publish"
)

// Evidence and review (GNLD_EVIDENCE_DIR). Each camera's worker offers
// every scored frame to the evidence store (package evidence) after
// publishing its result; the store keeps the anomalous ones and every
// Nth normal one, copying the frame and map on the worker and writing
// them on its own goroutine. The review page (web/page/review.html) reads
// them through the routes below; with accounts (GNLD_HTTP_USERS) an
// operator marks them, and with GNLD_TEACH_DIR teaches a false alarm
// (teach.go).
//
//	GET  /api/evidence?camera=&verdict=&marked=&part_id=&from=&to=&limit=   viewer
//	GET  /api/evidence/{id}                   the record, and what the caller may do with it
//	GET  /api/evidence/{id}/frame.jpg         the frame, after ROI and rotation
//	GET  /api/evidence/{id}/heatmap.png       the heat map (JET, alpha)
//	POST /api/evidence/{id}/mark              {"kind": "false_alarm"|"defect", "note": ""}   operator
//	POST /api/evidence/{id}/teach             make a false alarm normal to its camera's model   operator
//	POST /api/cameras/{name}/teach/undo       serve the version before the last teaching      operator

// keep offers frame f, scored by s as res and published as r, to the
// evidence store. It runs in c's worker: Offer copies and queues, never
// waits.
func (d *daemon) keep(s *scorer, f capture.Frame, res pipeline.Result, r publish.Result) {
	if d.evidence == nil {
		return
	}
	js, _ := json.Marshal(r)
	rec := evidence.Record{
		Camera: f.Camera, Time: f.Time, Seq: f.Seq, PartID: r.PartID, Anomalous: res.Anomalous,
		Score: float64(res.Score), Threshold: float64(res.Threshold), Model: s.model.Version, Product: s.product,
		Drift: r.Drift, Result: js,
	}
	d.evidence.Offer(rec, f.Mat, res.Map, res.MapW, res.MapH)
}

// reviewRoutes registers the review API on mux (behind a login when
// accounts are on; see http.go).
func (d *daemon) reviewRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/evidence", d.listEvidence)
	mux.HandleFunc("GET /api/evidence/{id}", d.getEvidence)
	mux.HandleFunc("GET /api/evidence/{id}/frame.jpg", d.evidenceFile(d.evidence.FramePath, "image/jpeg"))
	mux.HandleFunc("GET /api/evidence/{id}/heatmap.png", d.evidenceFile(d.evidence.HeatmapPath, "image/png"))
	if d.auth == nil {
		return // no accounts: nobody to stand behind a mark or a teaching
	}
	mux.Handle("POST /api/evidence/{id}/mark", d.auth.Require(auth.Operator, http.HandlerFunc(d.markEvidence)))
	if d.cfg.TeachDir != "" {
		mux.Handle("POST /api/evidence/{id}/teach", d.auth.Require(auth.Operator, http.HandlerFunc(d.teachEvidence)))
		mux.Handle("POST /api/cameras/{name}/teach/undo", d.auth.Require(auth.Operator, http.HandlerFunc(d.undoTeaching)))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// evidenceList is GET /api/evidence's answer.
type evidenceList struct {
	Records []evidence.Record `json:"records"`
	Cameras []string          `json:"cameras"`
	Stats   evidence.Stats    `json:"stats"`
}

func (d *daemon) listEvidence(w http.ResponseWriter, r *http.Request) {
	q, err := evidenceQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	recs := d.evidence.List(q)
	for i := range recs {
		recs[i].Result = nil // the list stays light; GET /api/evidence/{id} has it
	}
	names := make([]string, len(d.cams))
	for i, c := range d.cams {
		names[i] = c.name
	}
	writeJSON(w, http.StatusOK, evidenceList{Records: recs, Cameras: names, Stats: d.evidence.Stats()})
}

// evidenceQuery reads the list's filters; from and to are RFC 3339.
func evidenceQuery(r *http.Request) (evidence.Query, error) {
	v := r.URL.Query()
	q := evidence.Query{Camera: v.Get("camera"), Verdict: v.Get("verdict"), Marked: v.Get("marked"),
		PartID: v.Get("part_id"), Limit: 200}
	for name, t := range map[string]*time.Time{"from": &q.From, "to": &q.To} {
		if s := v.Get(name); s != "" {
			var err error
			if *t, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return q, fmt.Errorf("%s=%q: want a time such as 2026-12-05T08:00:00Z", name, s)
			}
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			return q, fmt.Errorf("limit=%q: want 1 to 10000", s)
		}
		q.Limit = n
	}
	return q, q.Check()
}

// evidenceDetail is GET /api/evidence/{id}'s answer.
type evidenceDetail struct {
	Record   evidence.Record `json:"record"`
	CanMark  bool            `json:"can_mark"`  // accounts are on: operators may mark
	CanTeach bool            `json:"can_teach"` // GNLD_TEACH_DIR is set too
	// Taught: the record's camera serves a taught version now (undo applies).
	Taught bool `json:"taught"`
}

func (d *daemon) getEvidence(w http.ResponseWriter, r *http.Request) {
	rec, ok := d.evidence.Get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, errors.New("no such record (removed by the size or age limit?)"))
		return
	}
	out := evidenceDetail{Record: rec, CanMark: d.auth != nil, CanTeach: d.auth != nil && d.cfg.TeachDir != ""}
	if c := d.cameraNamed(rec.Camera); c != nil {
		if s := c.pending(); s != nil {
			out.Taught = s.dir != s.base
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (d *daemon) evidenceFile(path func(string) (string, error), mime string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := path(r.PathValue("id"))
		if err != nil {
			writeError(w, http.StatusNotFound, err)
			return
		}
		w.Header().Set("Content-Type", mime)
		w.Header().Set("Cache-Control", "private, max-age=3600") // a record's files never change
		http.ServeFile(w, r, p)
	}
}

// markRequest is POST /api/evidence/{id}/mark's body.
type markRequest struct {
	Kind string `json:"kind"`
	Note string `json:"note"`
}

func (d *daemon) markEvidence(w http.ResponseWriter, r *http.Request) {
	var m markRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&m); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("body: %v; send JSON {\"kind\": \"false_alarm\" or \"defect\", \"note\": \"...\"}", err))
		return
	}
	if !slices.Contains([]string{evidence.MarkFalseAlarm, evidence.MarkDefect}, m.Kind) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("kind %q: want %q or %q", m.Kind, evidence.MarkFalseAlarm, evidence.MarkDefect))
		return
	}
	u, _ := auth.UserFrom(r.Context())
	id := r.PathValue("id")
	rec, err := d.evidence.Mark(id, evidence.Mark{Kind: m.Kind, By: u.Name, At: time.Now().UTC(), Note: m.Note})
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	d.auth.Audit(r, "mark", map[string]any{"record": id, "camera": rec.Camera, "kind": m.Kind, "score": rec.Score,
		"model": rec.Model, "part_id": rec.PartID})
	writeJSON(w, http.StatusOK, rec)
}

func (d *daemon) teachEvidence(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rec, ok := d.evidence.Get(id)
	if !ok {
		writeError(w, http.StatusNotFound, errors.New("no such record"))
		return
	}
	if rec.Mark == nil || rec.Mark.Kind != evidence.MarkFalseAlarm {
		writeError(w, http.StatusConflict, errors.New("only a frame marked as a false alarm can be taught; mark it first"))
		return
	}
	c := d.cameraNamed(rec.Camera)
	if c == nil {
		writeError(w, http.StatusConflict, fmt.Errorf("camera %q is not in GNLD_CAMERAS any more", rec.Camera))
		return
	}
	path, err := d.evidence.FramePath(id)
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	frame := gocv.IMRead(path, gocv.IMReadColor)
	if frame.Empty() {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("%s: not readable", path))
		return
	}
	defer frame.Close()
	u, _ := auth.UserFrom(r.Context())
	rep, err := d.teachFrame(c, id, frame, u.Name)
	if err != nil {
		d.log.Warn("teach: refused", "camera", c.name, "record", id, "by", u.Name, "err", err)
		writeError(w, http.StatusConflict, err)
		return
	}
	f := rep.Frames[0]
	d.auth.Audit(r, "teach", map[string]any{"record": id, "camera": c.name, "from": rep.From, "to": rep.Version,
		"rows": f.Rows, "score_before": f.ScoreBefore, "score_after": f.ScoreAfter, "threshold": f.Threshold})
	writeJSON(w, http.StatusOK, rep)
}

func (d *daemon) undoTeaching(w http.ResponseWriter, r *http.Request) {
	c := d.cameraNamed(r.PathValue("name"))
	if c == nil {
		writeError(w, http.StatusNotFound, errors.New("no such camera"))
		return
	}
	u, _ := auth.UserFrom(r.Context())
	dir, err := d.undoTeach(c, u.Name)
	if err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	d.auth.Audit(r, "teach_undo", map[string]any{"camera": c.name, "serving": dir})
	writeJSON(w, http.StatusOK, map[string]string{"camera": c.name, "serving": dir})
}

// cameraNamed is the camera called name, or nil.
func (d *daemon) cameraNamed(name string) *camera {
	for _, c := range d.cams {
		if c.name == name {
			return c
		}
	}
	return nil
}
