// Command gnlctl inspects, runs, benchmarks and evaluates gnld model bundles
// through gnld's own pipeline (the code the daemon runs).
//
//	gnlctl inspect [--json] BUNDLE
//	gnlctl infer --model BUNDLE IMAGE|DIR... [--heatmaps DIR]
//	gnlctl bench --model BUNDLE [--threads 1,2] [--n 50] [--cameras 1,2,4,8]
//	gnlctl eval  --model BUNDLE --data DIR [--perturb none|vand2] [--json FILE]
//	gnlctl calibrate --model BUNDLE --good DIR [--camera NAME] [--dir CALIBRATION_DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, new(usageError)):
		fmt.Fprintln(os.Stderr, "gnlctl:", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "gnlctl:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  gnlctl inspect [--json] BUNDLE                          metadata, accuracy table, tensors
  gnlctl infer --model BUNDLE IMAGE|DIR... [--heatmaps DIR]  JSON line per image
  gnlctl bench --model BUNDLE [--threads 1,2] [--n 50]    per-stage latency, FPS, peak RSS
               [--cameras 1,2,4,8]                       cameras sharing one bundle: total FPS, peak RSS
  gnlctl eval  --model BUNDLE --data DIR [--perturb none|vand2] [--json FILE]
                                                          image AUROC, F1Max, pixel AUROC, AUPRO
  gnlctl calibrate --model BUNDLE --good DIR [--camera NAME] [--dir CALIBRATION_DIR]
                                                          threshold from the line's good images, for gnld
  gnlctl collect --source SOURCE --out DIR [--every 1] [--count 300] [--max-mb 1000]
                 [--roi X,Y,W,H] [--rotate 0] [--fps 0]   training images from a camera, for gnl fit
  gnlctl keygen --out NAME                                Ed25519 key pair NAME.key, NAME.pub for signed bundles
  gnlctl sign --key NAME.key BUNDLE...                    write BUNDLE/signature.json
  gnlctl verify --pubkeys FILE BUNDLE...                  check bundles as gnld does with GNLD_MODEL_PUBKEYS
  gnlctl teach --model BUNDLE --out DIR IMAGE|DIR...      a new bundle version to which the images are normal
  gnlctl evidence export --dir EVIDENCE_DIR --out DIR [--camera C] [--from T] [--to T] [--part-id P]
                 [--verdict anomalous|normal] [--marked false_alarm|defect|unmarked]
                                                          gnld's kept frames, maps and results, for audits and gnl fit
  gnlctl user add|passwd|role|remove|list ... --file USERS.json
                                                          accounts of gnld's page (GNLD_HTTP_USERS)`

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg + "\n" + usage }

// run is gnlctl without the process: arguments in, output to stdout and
// stderr, an error out. Tests call it with buffers.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command"}
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"inspect": inspect, "infer": infer, "bench": bench, "eval": eval, "calibrate": calibrate, "collect": collect,
		"keygen": keygen, "sign": sign, "verify": verify, "teach": teachCmd,
		"evidence": evidenceCmd, "user": userCmd,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprintln(stdout, usage)
			return nil
		}
		return usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
	return cmd(ctx, args[1:], stdout, stderr)
}

// parse parses flags that may come before, between or after the positional
// arguments (`infer IMG --heatmaps DIR`), returning the positionals.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("gnlctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
