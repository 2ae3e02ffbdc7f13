package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"gnld/evidence"
	"gnld/internal/auth"
)

// evidenceCmd is `gnlctl evidence export`: records kept by gnld
// (GNLD_EVIDENCE_DIR) for a time range, a camera, a part id or a mark,
// copied into a folder: each record's frame, heat map and result, an
// index.jsonl, and the marked frames under false_alarm/ and defect/ (the
// false alarms are good images for the next `gnl fit`). The store is
// opened read-only, so gnld may keep writing meanwhile.
func evidenceCmd(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "export" {
		return usageError{"evidence needs a subcommand: export"}
	}
	fs := newFlagSet("evidence export", stderr)
	dir := fs.String("dir", os.Getenv("GNLD_EVIDENCE_DIR"), "gnld's evidence folder (default $GNLD_EVIDENCE_DIR)")
	out := fs.String("out", "", "folder to export into (required)")
	camera := fs.String("camera", "", "only this camera")
	from := fs.String("from", "", "only records at or after this time (RFC 3339, e.g. 2026-12-05T06:00:00Z)")
	to := fs.String("to", "", "only records before this time (RFC 3339)")
	part := fs.String("part-id", "", "only this part id")
	verdict := fs.String("verdict", "", "anomalous or normal (default both)")
	marked := fs.String("marked", "", "false_alarm, defect or unmarked (default all)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if *dir == "" || *out == "" || len(pos) > 0 {
		return usageError{"evidence export needs --dir EVIDENCE_DIR (or GNLD_EVIDENCE_DIR) and --out DIR, and no other arguments"}
	}
	q := evidence.Query{Camera: *camera, PartID: *part, Verdict: *verdict, Marked: *marked}
	for name, v := range map[string]struct {
		s string
		t *time.Time
	}{"--from": {*from, &q.From}, "--to": {*to, &q.To}} {
		if v.s == "" {
			continue
		}
		if *v.t, err = time.Parse(time.RFC3339, v.s); err != nil {
			return usageError{fmt.Sprintf("%s %q: want a time such as 2026-12-05T06:00:00Z", name, v.s)}
		}
	}
	if err := q.Check(); err != nil {
		return usageError{err.Error()}
	}
	if st, err := os.Stat(*dir); err != nil || !st.IsDir() {
		return fmt.Errorf("--dir %s: not a folder; give gnld's GNLD_EVIDENCE_DIR", *dir)
	}
	s, err := evidence.Open(evidence.Config{Dir: *dir, ReadOnly: true}, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	defer s.Close()
	n, err := s.Export(q, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d record(s) exported to %s\n", n, *out)
	return nil
}

// userCmd is `gnlctl user ...` (package auth): gnld's accounts file.
func userCmd(_ context.Context, args []string, stdout, _ io.Writer) error {
	err := auth.UserCommand(args, os.Stdin, stdout)
	var ue auth.UsageError
	if errors.As(err, &ue) {
		return usageError{ue.Msg}
	}
	return err
}
