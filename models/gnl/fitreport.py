"""The one-page picture `gnl fit` ends with (OUT/fit.png), for a process
engineer who would rather look than read logs:

- top left: the training curve, stage 1's loss and the held-back normal
  images' mean score per epoch (each scaled to its own range);
- top right: the held-back normal images' scores (clean, and in the drift
  policy's views), the same images with a synthetic defect, and the
  threshold: normal dots left of the line and defect dots right of it is
  what a good model looks like;
- bottom: the held-back normal images that score highest, with their heat
  maps (one colour scale, from the lowest value of those maps to the
  threshold: red reaches it).

Drawn with OpenCV alone (the toolchain has no plotting library).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from gnl.report import overlay

W, H = 1200, 760
PANEL_H = 400
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
BLUE, ORANGE, GREEN, RED = (200, 110, 30), (20, 140, 245), (60, 160, 60), (40, 40, 220)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, s: str, x: int, y: int, scale: float = 0.5, colour=BLACK) -> None:
    cv2.putText(img, s, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def _curve(img: np.ndarray, box: tuple[int, int, int, int], values: Sequence[float], colour) -> None:
    x0, y0, w, h = box
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return
    lo, hi = float(v.min()), float(v.max())
    ys = y0 + h - (v - lo) / max(hi - lo, 1e-12) * h
    xs = x0 + np.arange(v.size) / (v.size - 1) * w
    cv2.polylines(img, [np.stack([xs, ys], 1).astype(np.int32)], False, colour, 2, cv2.LINE_AA)


def _training(img: np.ndarray, epochs: Sequence[dict]) -> None:
    x0, y0, w, h = 60, 90, 480, 260
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), GREY, 1)
    _text(img, "training (stage 1), per epoch", x0, 75, 0.65)
    if not epochs:
        _text(img, "no stage-1 epochs recorded", x0 + 20, y0 + h // 2)
        return
    _curve(img, (x0, y0, w, h), [e["loss"] for e in epochs], BLUE)
    _curve(img, (x0, y0, w, h), [e["normal_score"] for e in epochs], ORANGE)
    first, last = epochs[0], epochs[-1]
    _text(img, f"loss {first['loss']:.3f} -> {last['loss']:.3f}", x0, y0 + h + 25, 0.5, BLUE)
    _text(img, f"held-back normal score {first['normal_score']:.3f} -> {last['normal_score']:.3f}",
          x0 + 200, y0 + h + 25, 0.5, ORANGE)
    _text(img, f"{len(epochs)} epochs", x0 + w - 80, y0 + h + 45, 0.45, GREY)


def _scores(img: np.ndarray, normal: np.ndarray, views: np.ndarray, synthetic: np.ndarray,
            threshold: float) -> None:
    x0, y0, w, h = 640, 90, 500, 260
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), GREY, 1)
    _text(img, "held-back images: scores against the threshold", x0, 75, 0.65)
    every = np.concatenate([normal, views, synthetic, [threshold]])
    lo, hi = float(every.min()), float(every.max())
    span = max(hi - lo, 1e-12)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span

    def x(v: float) -> int:
        return int(x0 + (v - lo) / (hi - lo) * w)

    rng = np.random.default_rng(0)  # vertical jitter only, so dots do not hide each other
    rows = [("normal, clean", normal, GREEN, 0.2), ("normal, policy views", views, BLUE, 0.5),
            ("synthetic defect", synthetic, RED, 0.8)]
    for name, vals, colour, row in rows:
        yc = int(y0 + row * h)
        _text(img, f"{name} ({len(vals)})", x0 + 5, yc - 35, 0.45, colour)
        for v in vals:
            cv2.circle(img, (x(float(v)), yc + int(rng.integers(-18, 19))), 3, colour, -1, cv2.LINE_AA)
    cv2.line(img, (x(threshold), y0), (x(threshold), y0 + h), BLACK, 2)
    _text(img, f"threshold {threshold:.3f}", min(x(threshold) + 5, x0 + w - 150), y0 + h + 25, 0.5)
    over = int((normal >= threshold).sum()) + int((views >= threshold).sum())
    missed = int((synthetic < threshold).sum())
    _text(img, f"normal at or over it: {over} of {len(normal) + len(views)}; synthetic defects under it: "
               f"{missed} of {len(synthetic)}", x0, y0 + h + 45, 0.45)


def write_fit_report(path: Path, epochs: Sequence[dict], normal: np.ndarray, views: np.ndarray,
                     synthetic: np.ndarray, threshold: float, worst: Sequence[tuple[np.ndarray, np.ndarray, float]],
                     title: str) -> Path:
    """OUT/fit.png; `worst` holds (image, map at input size, score) of the
    highest-scoring held-back normal images."""
    img = np.full((H, W, 3), 255, np.uint8)
    head, _, tail = title.partition("; ")
    _text(img, head, 20, 18, 0.5)
    _text(img, tail, 20, 36, 0.45, GREY)
    lo = min((float(m.min()) for _, m, _ in worst[:5]), default=0.0)
    _training(img, epochs)
    _scores(img, np.asarray(normal), np.asarray(views), np.asarray(synthetic), threshold)
    _text(img, "held-back normal images that score highest (red reaches the threshold)", 60, PANEL_H + 40, 0.65)
    cell = 200
    for i, (im, amap, score) in enumerate(worst[:5]):
        tile = cv2.resize(overlay(im, amap, lo, threshold), (cell, cell), interpolation=cv2.INTER_AREA)
        x, y = 60 + i * (cell + 24), PANEL_H + 60
        img[y:y + cell, x:x + cell] = tile
        _text(img, f"score {score:.3f}", x, y + cell + 22, 0.5, RED if score >= threshold else BLACK)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: cannot write PNG")
    return path
