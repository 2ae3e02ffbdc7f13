package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"gnld/models"
	"gnld/runtime"
)

// inspect prints a bundle's metadata, its model's tensors as TFLite sees
// them, and where the model's nodes run with --delegate (default xnnpack):
// how many each delegate took and which operators stayed on TFLite's
// builtin kernels.
func inspect(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", stderr)
	delegate := fs.String("delegate", runtime.XNNPACK, "where to place the model: xnnpack, builtin, gpu or a delegate plugin .so")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"inspect takes one BUNDLE folder"}
	}
	b, err := models.Load(pos[0])
	if err != nil {
		return err
	}
	ip, err := runtime.New(b.ModelPath, runtime.Options{Threads: 1, Delegate: *delegate})
	if err != nil {
		return err
	}
	defer ip.Close()
	m := b.Meta
	fmt.Fprintf(stdout, "bundle     %s\nname       %s %s\nmethod     %s (backbone %s)\nquantized  %s\nmodel      %s sha256 %s\n",
		b.Dir, m.Name, m.Version, m.Method, m.Backbone, m.Quantization, b.ModelPath, m.ModelSHA256)
	fmt.Fprintf(stdout, "input      %dx%d %s %s mean %v std %v\n", m.Input.Width, m.Input.Height, m.Input.ChannelOrder, m.Input.DType, m.Input.Mean, m.Input.Std)
	fmt.Fprintf(stdout, "output     %dx%d %s: %s\n", m.Output.Width, m.Output.Height, m.Output.DType, m.Output.Meaning)
	fmt.Fprintf(stdout, "postproc   resize %s, blur sigma %g, score %s\n", m.Postprocess.Resize, m.Postprocess.BlurSigma, m.Postprocess.Score)
	fmt.Fprintf(stdout, "threshold  %g (%s)\n", m.Threshold.Value, m.Threshold.Source)
	fmt.Fprintf(stdout, "training   %s, %d images, %d epochs, seed %d, size %d, fingerprint %s\n",
		m.Training.Data, m.Training.Images, m.Training.Epochs, m.Training.Seed, m.Training.ImageSize, m.Training.Fingerprint)
	if len(m.Metrics) > 0 {
		metrics, _ := json.Marshal(m.Metrics)
		fmt.Fprintf(stdout, "metrics    %s\n", metrics)
	}
	for _, t := range []struct {
		role string
		info runtime.TensorInfo
	}{{"input", ip.Input().Info()}, {"output", ip.Output().Info()}} {
		fmt.Fprintf(stdout, "tensor     %-6s %q %s %v scale %g zero_point %d\n",
			t.role, t.info.Name, t.info.DType, t.info.Shape, t.info.Quant.Scale, t.info.Quant.ZeroPoint)
	}
	p := ip.Placement()
	fmt.Fprintf(stdout, "runs on    %s\n", ip.Delegate())
	fmt.Fprintf(stdout, "placement  %s\n", p)
	fmt.Fprintf(stdout, "work       %.3f GMAC per frame (convolutions, fully connected, matmul)\n", float64(p.MACs)/1e9)
	return nil
}
