"""Rendering evaluation results for people: a metrics table and a heatmap grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GRID_CELL = 128
METRIC_NAMES = ("image_auroc", "image_f1max", "pixel_auroc", "aupro")
_SHORT = {"image_auroc": "I-AUROC", "image_f1max": "I-F1Max", "pixel_auroc": "P-AUROC", "aupro": "AUPRO"}


@dataclass
class GridCell:
    """One scored image for the grid: the (perturbed) image and mask at input size, its map."""

    image: np.ndarray
    mask: np.ndarray
    amap: np.ndarray
    score: float


def format_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Conditions as rows, each model's four metrics side by side (percent)."""
    kinds = list(metrics)
    conds = list(next(iter(metrics.values())))
    head = f"{'condition':11s}" + "".join(
        f" | {k:^{8 * len(METRIC_NAMES) - 1}s}" for k in kinds)
    sub = " " * 11 + "".join(" | " + " ".join(f"{_SHORT[n]:>7s}" for n in METRIC_NAMES) for _ in kinds)
    lines = [head, sub]
    for c in conds:
        lines.append(f"{c:11s}" + "".join(
            " | " + " ".join(f"{100 * metrics[k][c][n]:7.2f}" for n in METRIC_NAMES) for k in kinds))
    return "\n".join(lines)


def overlay(bgr: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """JET colour map of `amap` scaled to [lo, hi], blended 50/50 over the image."""
    norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(bgr, 0.5, heat, 0.5, 0)


def _cell(img: np.ndarray, text: str) -> np.ndarray:
    img = cv2.resize(img, (GRID_CELL, GRID_CELL), interpolation=cv2.INTER_AREA)
    cv2.rectangle(img, (0, 0), (GRID_CELL, 14), (0, 0, 0), -1)
    cv2.putText(img, text[:24], (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def write_grid(path: Path, titles: Sequence[str], originals: Sequence[np.ndarray],
               columns: Mapping[str, Sequence[GridCell]]) -> None:
    """PNG: per row the original image, its ground truth, then one heatmap per column.

    The ground truth is drawn in red over the first column's image (the clean
    condition). Each column's colours share one scale (its lowest map value to
    its highest score), so rows compare; each cell shows its score.
    """
    first = next(iter(columns.values()))
    lines = []
    for r, (title, orig) in enumerate(zip(titles, originals, strict=True)):
        gt = first[r].image.copy()
        m = first[r].mask > 0
        gt[m] = (0.5 * gt[m] + (0, 0, 127)).astype(np.uint8)
        cells = [_cell(orig, title), _cell(gt, "ground truth")]
        for name, col in columns.items():
            lo = min(float(c.amap.min()) for c in col)
            hi = max(c.score for c in col)
            cells.append(_cell(overlay(col[r].image, col[r].amap, lo, hi), f"{name} {col[r].score:.3f}"))
        lines.append(np.hstack(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.vstack(lines)):
        raise SystemExit(f"{path}: cannot write PNG")
