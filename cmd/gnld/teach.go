package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gocv.io/x/gocv"

	"gnld/internal/registry"
	"gnld/runtime"
	"gnld/teach"
)

// Teaching (GNLD_TEACH_DIR): an operator marks a flagged frame kept in the
// evidence store as a false alarm and teaches it (review.go); package
// teach writes a new version of the bundle the camera serves in which
// that frame is normal to the memory, into
// GNLD_TEACH_DIR/<camera>/<version>/, and the camera's worker takes it
// between two frames, as after a reload. The bundle taught (the camera's
// own model, or its product's: its base) is never changed. Undo serves the
// version before. A restart serves the last taught version again, as long
// as the base folder holds what it held when it was taught (same
// registry.Fingerprint); a new model put in the base folder starts over
// from it.
//
// Each camera's taught versions of each base are kept in
// GNLD_TEACH_DIR/<camera>/state.json.

// taughtBase is one base bundle's taught versions for one camera.
type taughtBase struct {
	Fingerprint string   `json:"fingerprint"` // registry.Fingerprint of the base when taught
	Versions    []string `json:"versions"`    // taught folders, oldest first; the last is served
}

// teachState is GNLD_TEACH_DIR/<camera>/state.json: base folder -> its taught versions.
type teachState map[string]*taughtBase

func (d *daemon) teachStatePath(camera string) string {
	return filepath.Join(d.cfg.TeachDir, camera, "state.json")
}

func (d *daemon) readTeachState(camera string) (teachState, error) {
	st := teachState{}
	data, err := os.ReadFile(d.teachStatePath(camera))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w; remove it to serve the bundles as configured", d.teachStatePath(camera), err)
	}
	return st, nil
}

func (d *daemon) writeTeachState(camera string, st teachState) error {
	path := d.teachStatePath(camera)
	data, _ := json.MarshalIndent(st, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// taughtOr is the folder camera serves for base: its last taught version
// when teaching is on and base is unchanged since, else base.
func (d *daemon) taughtOr(camera, base string) string {
	if d.cfg.TeachDir == "" {
		return base
	}
	st, err := d.readTeachState(camera)
	if err != nil {
		d.log.Warn("teach: state not readable; serving the bundle as configured", "camera", camera, "err", err)
		return base
	}
	tb := st[base]
	if tb == nil || len(tb.Versions) == 0 {
		return base
	}
	if fp := registry.Fingerprint(base); fp != tb.Fingerprint {
		d.log.Info("teach: the bundle taught has changed since; its taught versions are not served", "camera", camera,
			"base", base, "taught", len(tb.Versions))
		return base
	}
	return tb.Versions[len(tb.Versions)-1]
}

// teachFrame makes frame (kept as evidence id, scored on camera c) normal
// to the model c serves, and serves the result from c's next frame on.
// by is the operator, for model.json. It takes seconds (package teach):
// call it from a request's goroutine, never a camera's.
func (d *daemon) teachFrame(c *camera, id string, frame gocv.Mat, by string) (teach.Report, error) {
	if d.cfg.TeachDir == "" {
		return teach.Report{}, errors.New("teaching is off: set GNLD_TEACH_DIR")
	}
	if d.cfg.pubkeys != nil {
		return teach.Report{}, errors.New("teaching is off while GNLD_MODEL_PUBKEYS is set: a taught bundle is not signed by a trusted key; " +
			"export the marked frames (gnlctl evidence export) and train and sign the next model instead")
	}
	d.reloadMu.Lock() // one teaching, reload or changeover at a time
	defer d.reloadMu.Unlock()
	s := c.pending()
	if s == nil {
		return teach.Report{}, fmt.Errorf("camera %s serves no model now", c.name)
	}
	l := d.reg.Loaded(s.dir)
	if l == nil {
		return teach.Report{}, fmt.Errorf("camera %s: bundle %s is not loaded", c.name, s.dir)
	}
	st, err := d.readTeachState(c.name)
	if err != nil {
		return teach.Report{}, err
	}
	tb := st[s.base]
	if tb == nil || s.dir == s.base {
		tb = &taughtBase{Fingerprint: registry.Fingerprint(s.base)}
		st[s.base] = tb
	}
	root := filepath.Join(d.cfg.TeachDir, c.name)
	if err := os.MkdirAll(root, 0o750); err != nil {
		return teach.Report{}, err
	}
	tmp := filepath.Join(root, fmt.Sprintf(".teaching-%d", time.Now().UnixNano()))
	rep, err := teach.Teach(l.Bundle, []teach.Frame{{ID: id, Camera: c.name, Mat: frame}}, tmp, teach.Options{
		By: by, Threshold: float64(s.pipe.Threshold()),
		Runtime: runtime.Options{Threads: 1, Delegate: d.cfg.Delegate},
	})
	if err != nil {
		return teach.Report{}, err
	}
	dst := filepath.Join(root, rep.Version)
	if err := os.Rename(tmp, dst); err != nil {
		os.RemoveAll(tmp)
		return teach.Report{}, err
	}
	rep.Dir = dst
	if err := d.serveTaught(c, s, dst); err != nil {
		return teach.Report{}, err
	}
	tb.Versions = append(tb.Versions, dst)
	if err := d.writeTeachState(c.name, st); err != nil {
		d.log.Error("teach: state not saved: a restart serves the bundle as configured", "camera", c.name, "err", err)
	}
	f := rep.Frames[0]
	d.log.Info("teach: frame taught; the camera serves the new version from its next frame", "camera", c.name, "frame", id,
		"by", by, "from", rep.From, "to", rep.Version, "rows", f.Rows, "score_before", f.ScoreBefore, "score_after", f.ScoreAfter,
		"threshold", f.Threshold, "normal", f.Normal, "took_ms", ms(rep.Took))
	return rep, nil
}

// undoTeach serves the version before camera c's last taught one (or the
// base), and forgets the last; the folder stays on disk for the record.
func (d *daemon) undoTeach(c *camera, by string) (string, error) {
	if d.cfg.TeachDir == "" {
		return "", errors.New("teaching is off: set GNLD_TEACH_DIR")
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	s := c.pending()
	if s == nil {
		return "", fmt.Errorf("camera %s serves no model now", c.name)
	}
	st, err := d.readTeachState(c.name)
	if err != nil {
		return "", err
	}
	tb := st[s.base]
	if tb == nil || len(tb.Versions) == 0 || s.dir == s.base {
		return "", fmt.Errorf("camera %s: nothing taught to undo", c.name)
	}
	prev := s.base
	if n := len(tb.Versions); n > 1 {
		prev = tb.Versions[n-2]
	}
	if err := d.serveTaught(c, s, prev); err != nil {
		return "", err
	}
	tb.Versions = tb.Versions[:len(tb.Versions)-1]
	if err := d.writeTeachState(c.name, st); err != nil {
		d.log.Error("teach: state not saved", "camera", c.name, "err", err)
	}
	d.log.Info("teach: undone; the camera serves the version before from its next frame", "camera", c.name, "by", by,
		"serving", prev)
	return prev, nil
}

// pending is the scorer camera c serves from its next frame: the one
// handed to its worker (by a teaching, an undo or a reload) and not taken
// yet, else the one it serves. A camera takes a new scorer only with its
// next frame, which may be long in coming (a trigger camera between parts,
// a folder at its end): teaching again, undoing and telling whether it
// serves a taught version must look at the scorer it is about to serve,
// or a second teaching would start again from the base and an undo would
// find nothing taught. Its fields may be read without reloadMu; only
// teaching, undo and reload replace or close it, under reloadMu.
func (c *camera) pending() *scorer {
	if s := c.next.Load(); s != nil {
		return s
	}
	return c.serving.Load()
}

// serveTaught loads folder dir (a taught version of s's base, or the base)
// and hands it to c's worker for its next frame. Called under reloadMu.
func (d *daemon) serveTaught(c *camera, s *scorer, dir string) error {
	l, err := d.reg.Get(dir, 1)
	if err != nil {
		return fmt.Errorf("taught bundle %s: %w", dir, err)
	}
	ns, err := d.newScorer(l, c.cfg, s.product, false)
	if err != nil {
		return err
	}
	ns.base = s.base
	if stale := c.next.Swap(ns); stale != nil {
		stale.close()
	}
	return nil
}
