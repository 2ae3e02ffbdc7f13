package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/user"
	"path/filepath"

	"gnld/models"
	"gnld/runtime"
	"gnld/teach"
)

// teachCmd is `gnlctl teach`: the images given become normal to the
// bundle's memory (package teach), written as a new bundle version in OUT;
// the bundle itself is not changed. gnld does the same from its review
// page; this is the same thing from a shell, for a folder of images.
func teachCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("teach", stderr)
	model := fs.String("model", "", "bundle folder to teach (required; not modified)")
	out := fs.String("out", "", "folder for the new bundle version (required; must not exist)")
	by := fs.String("by", "", "who teaches, recorded in model.json (default: the user running gnlctl)")
	maxRows := fs.Int("max-rows", 0, "bank rows one image may take (default: a quarter of its descriptors)")
	threshold := fs.Float64("threshold", 0, "the threshold the images are judged against, e.g. a camera's calibrated one (default: the bundle's)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || *out == "" || len(pos) == 0 {
		return usageError{"teach needs --model BUNDLE, --out DIR and at least one IMAGE or DIR of normal images"}
	}
	b, err := models.Load(*model)
	if err != nil {
		return err
	}
	images, err := expandImages(pos)
	if err != nil {
		return err
	}
	if *by == "" {
		if u, err := user.Current(); err == nil {
			*by = u.Username
		}
	}
	frames := make([]teach.Frame, 0, len(images))
	defer func() {
		for _, f := range frames {
			f.Mat.Close()
		}
	}()
	for _, path := range images {
		m, err := readImage(path)
		if err != nil {
			return err
		}
		frames = append(frames, teach.Frame{ID: filepath.Base(path), Mat: m})
	}
	rep, err := teach.Teach(b, frames, *out, teach.Options{By: *by, MaxRows: *maxRows, Threshold: *threshold,
		Runtime: runtime.Options{Threads: 1, Delegate: runtime.XNNPACK}})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for _, f := range rep.Frames {
		enc.Encode(f)
	}
	still := 0
	for _, f := range rep.Frames {
		if !f.Normal {
			still++
		}
	}
	fmt.Fprintf(stderr, "gnlctl teach: %s version %s (taught from %s): %d image(s) in %.1f s, bank spacing %.3g; %d still at or above the threshold\n",
		rep.Dir, rep.Version, rep.From, len(rep.Frames), rep.Took.Seconds(), rep.Radius, still)
	if still > 0 {
		fmt.Fprintln(stderr, "gnlctl teach: what still flags them is the student or the segmentation head, which teaching does not change: "+
			"export the marked frames and train again with gnl fit")
	}
	return nil
}
