"""`gnl`: the model toolchain's command line (anomalib-like verbs).

    gnl fit     --data DIR --out BUNDLE_DIR [--backbone ...]   train (gnl/train.py)
    gnl test    --data DIR --model BUNDLE_DIR [--perturb ...]  evaluate (gnl/evaluate.py)
    gnl export  --checkpoint CKPT --out BUNDLE_DIR             int8 TFLite bundle (gnl/export.py)
    gnl predict IMAGE... --model BUNDLE_DIR --out DIR          heatmap PNGs (gnl/predict.py)
    gnl teacher-check --data DIR                               pretrained vs random teacher (gnl/teacher.py)
    gnl drift-stats --data DIR --bundle BUNDLE_DIR             training-image statistics for drift (gnl/drift.py)

Each verb lives in its own module, which defines
`add_arguments(parser)` and `run(args) -> int`. Modules load lazily so that
`gnl --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS: dict[str, tuple[str, str]] = {
    "fit": ("gnl.train", "train a GNL (or RD4AD baseline) model on normal images"),
    "test": ("gnl.evaluate", "evaluate a bundle or checkpoint on an MVTec-layout folder"),
    "export": ("gnl.export", "export a checkpoint to an int8 TFLite bundle"),
    "predict": ("gnl.predict", "write heatmap PNGs for images"),
    "teacher-check": ("gnl.teacher", "show the teacher is pretrained: kNN AUROC vs random weights"),
    "drift-stats": ("gnl.drift", "write the training images' statistics into a bundle (drift.json)"),
    "teachable": ("gnl.teachable", "make an older bundle's memory teachable on the device (gnld's teach)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="gnl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(VERBS[argv[0]][0])
    verb_parser = argparse.ArgumentParser(prog=f"gnl {argv[0]}", description=VERBS[argv[0]][1])
    module.add_arguments(verb_parser)
    args = verb_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
