package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"gnld/models"
	"gnld/runtime"
)

// inspect prints a bundle's metadata, the accuracy recorded in it as a
// table, its model's tensors as TFLite sees them, and where the model's
// nodes run with --delegate (default xnnpack): how many each delegate took
// and which operators stayed on TFLite's builtin kernels. --json prints the
// same as one JSON object, model.json as it is.
func inspect(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", stderr)
	delegate := fs.String("delegate", runtime.XNNPACK, "where to place the model: xnnpack, builtin, gpu or a delegate plugin .so")
	asJSON := fs.Bool("json", false, "print one JSON object (model.json, tensors, placement) instead of text")
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
	p := ip.Placement()
	if *asJSON {
		return json.NewEncoder(stdout).Encode(inspectJSON{
			Bundle: b.Dir, Model: b.ModelPath, Meta: m,
			Tensors: map[string]tensorJSON{"input": newTensorJSON(ip.Input().Info()), "output": newTensorJSON(ip.Output().Info())},
			RunsOn:  ip.Delegate(), Placement: p, GMAC: float64(p.MACs) / 1e9,
		})
	}
	fmt.Fprintf(stdout, "bundle     %s\nname       %s %s\nmethod     %s (backbone %s)\nquantized  %s\nmodel      %s sha256 %s\n",
		b.Dir, m.Name, m.Version, m.Method, m.Backbone, m.Quantization, b.ModelPath, m.ModelSHA256)
	fmt.Fprintf(stdout, "input      %dx%d %s %s mean %v std %v\n", m.Input.Width, m.Input.Height, m.Input.ChannelOrder, m.Input.DType, m.Input.Mean, m.Input.Std)
	fmt.Fprintf(stdout, "output     %dx%d %s: %s\n", m.Output.Width, m.Output.Height, m.Output.DType, m.Output.Meaning)
	fmt.Fprintf(stdout, "postproc   resize %s, blur sigma %g, score %s\n", m.Postprocess.Resize, m.Postprocess.BlurSigma, m.Postprocess.Score)
	fmt.Fprintf(stdout, "threshold  %g (%s)\n", m.Threshold.Value, m.Threshold.Source)
	fmt.Fprintf(stdout, "training   %s, %d images, %d epochs, seed %d, size %d, fingerprint %s\n",
		m.Training.Data, m.Training.Images, m.Training.Epochs, m.Training.Seed, m.Training.ImageSize, m.Training.Fingerprint)
	writeMetrics(stdout, m.Metrics)
	for _, t := range []struct {
		role string
		info runtime.TensorInfo
	}{{"input", ip.Input().Info()}, {"output", ip.Output().Info()}} {
		fmt.Fprintf(stdout, "tensor     %-6s %q %s %v scale %g zero_point %d\n",
			t.role, t.info.Name, t.info.DType, t.info.Shape, t.info.Quant.Scale, t.info.Quant.ZeroPoint)
	}
	fmt.Fprintf(stdout, "runs on    %s\n", ip.Delegate())
	fmt.Fprintf(stdout, "placement  %s\n", p)
	fmt.Fprintf(stdout, "work       %.3f GMAC per frame (convolutions, fully connected, matmul)\n", float64(p.MACs)/1e9)
	return nil
}

// inspectJSON is `gnlctl inspect --json`.
type inspectJSON struct {
	Bundle    string                `json:"bundle"`
	Model     string                `json:"model_path"`
	Meta      models.Meta           `json:"model_json"`
	Tensors   map[string]tensorJSON `json:"tensors"`
	RunsOn    string                `json:"runs_on"`
	Placement runtime.Placement     `json:"placement"`
	GMAC      float64               `json:"gmac"`
}

type tensorJSON struct {
	Name      string  `json:"name"`
	DType     string  `json:"dtype"`
	Shape     []int   `json:"shape"`
	Scale     float64 `json:"scale"`
	ZeroPoint int64   `json:"zero_point"`
}

func newTensorJSON(i runtime.TensorInfo) tensorJSON {
	return tensorJSON{Name: i.Name, DType: fmt.Sprint(i.DType), Shape: i.Shape, Scale: float64(i.Quant.Scale), ZeroPoint: int64(i.Quant.ZeroPoint)}
}

// metricRuns orders the runs `make eval --record` writes (models/BUNDLE.md);
// any other run follows in name order.
var metricRuns = []string{"float", "int8", "gnlctl_int8"}

// writeMetrics prints the bundle's recorded accuracy as an aligned table,
// one row per run and condition: image AUROC, F1Max, pixel AUROC and AUPRO
// in percent, and false alarms and recall at the bundle's threshold.
func writeMetrics(w io.Writer, metrics map[string]map[string]any) {
	runs := slices.Sorted(func(yield func(string) bool) {
		for r := range metrics {
			if r != "measured_on" && !yield(r) {
				return
			}
		}
	})
	slices.SortStableFunc(runs, func(a, b string) int { return rank(a) - rank(b) })
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	rows := 0
	for _, run := range runs {
		conds := slices.Sorted(func(yield func(string) bool) {
			for c := range metrics[run] {
				if !yield(c) {
					return
				}
			}
		})
		slices.SortStableFunc(conds, func(a, b string) int { return boolInt(b == "clean") - boolInt(a == "clean") })
		for _, cond := range conds {
			r, ok := metrics[run][cond].(map[string]any)
			if !ok || r["image_auroc"] == nil {
				continue
			}
			if rows == 0 {
				fmt.Fprintln(tw, "run\tcondition\timage AUROC\tF1Max\tpixel AUROC\tAUPRO\tfalse alarms\trecall")
			}
			rows++
			v, _ := r["verdict"].(map[string]any)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", run, cond, percent(r["image_auroc"]), percent(r["image_f1max"]),
				percent(r["pixel_auroc"]), percent(r["aupro"]), ratio(v, "false_alarms", "good_images"), ratio(v, "detected", "defect_images"))
		}
	}
	tw.Flush()
	for i, line := range strings.Split(strings.TrimSuffix(table.String(), "\n"), "\n") {
		if rows > 0 {
			fmt.Fprintf(w, "%-11s%s\n", map[bool]string{true: "metrics", false: ""}[i == 0], strings.TrimRight(line, " "))
		}
	}
	if rows == 0 {
		fmt.Fprintln(w, "metrics    none recorded (make eval EVAL_ARGS=\"BUNDLE ... --record\" writes them)")
		return
	}
	if on, ok := metrics["measured_on"]; ok {
		fmt.Fprintf(w, "measured   on %v, %v test images: %v\n", on["data"], on["test_images"], on["command"])
	}
}

func rank(run string) int {
	if i := slices.Index(metricRuns, run); i >= 0 {
		return i
	}
	return len(metricRuns)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// percent prints a fraction as a percentage with two decimals; "-" if absent.
func percent(x any) string {
	f, ok := x.(float64)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2f", 100*f)
}

// ratio prints v[num]/v[den], e.g. 2/193; "-" if absent.
func ratio(v map[string]any, num, den string) string {
	n, ok1 := v[num].(float64)
	d, ok2 := v[den].(float64)
	if !ok1 || !ok2 {
		return "-"
	}
	return strings.TrimSpace(fmt.Sprintf("%.0f/%.0f", n, d))
}
