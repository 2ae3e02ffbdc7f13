"""`gnl predict`: heatmap PNGs and scores for single images.

    gnl predict IMAGE... --model BUNDLE_DIR_OR_CKPT --out DIR [--threshold T]

Writes DIR/<image stem>_heatmap.png (the post-processed map as a JET colour
map over the image, at the image's own size) and prints one line per image:
path, score and, when a threshold is known (`--threshold`, else the bundle's
`threshold.value`), the verdict gnld would give (`score >= threshold`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from gnl.data import load_image
from gnl.evaluate import load_model
from gnl.preprocess import postprocess
from gnl.report import overlay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gnl predict`."""
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", required=True, type=Path, help="bundle folder or checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="folder for the heatmap PNGs")
    parser.add_argument("--threshold", type=float, default=None,
                        help="verdict threshold (default: the bundle's threshold.value)")


def run(args: argparse.Namespace) -> int:
    """Score each image, write its heatmap, print `path score [verdict]`."""
    model = load_model(args.model)
    threshold = args.threshold
    if threshold is None:
        threshold = getattr(model.scorer, "meta", {}).get("threshold", {}).get("value")
    args.out.mkdir(parents=True, exist_ok=True)
    stems = [p.stem for p in args.images]
    if len(set(stems)) != len(stems):
        raise SystemExit("gnl predict: two images share a file name stem; their heatmaps would collide")
    for path in args.images:
        bgr = load_image(path)
        amap, score = postprocess(model.scorer.raw_map(bgr), model.scorer.spec, model.scorer.blur_sigma)
        amap = cv2.resize(amap, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
        # Colour scale from 0 to the threshold (or the image's score when none is known):
        # at the threshold a pixel is full red, so red means "anomalous".
        hi = threshold if threshold is not None else score
        out = args.out / f"{path.stem}_heatmap.png"
        if not cv2.imwrite(str(out), overlay(bgr, amap, 0.0, hi)):
            raise SystemExit(f"{out}: cannot write PNG")
        verdict = "" if threshold is None else (" anomalous" if score >= threshold else " normal")
        print(f"{path}\t{score:.6f}{verdict}\t{out}")
    return 0
