"""Drift statistics: what the training images look like, for gnld's drift monitor.

    gnl drift-stats --data DIR --bundle BUNDLE     write BUNDLE/drift.json
    python -m gnl.drift features --reference drift.json IMAGE...   per-image features (Go parity test)
    python -m gnl.drift perturb --out DIR IMAGE...   the drift test's conditions (Go drift test)

gnld compares live frames with these statistics and warns when a camera's
input drifts away from what the model learned (light, focus, noise, a
moved or rotated camera). Both sides compute the per-image features the
same way, with the same OpenCV calls (Go: drift/features.go); BUNDLE.md
("drift.json") is the contract.

Per image, on a small copy and its grey version (cvtColor BGR2GRAY). The
copy is made in two steps, so that it is cheap for any camera resolution
and still averages pixels rather than skipping them: INTER_LINEAR to
PRESIZE x PRESIZE (the model's own input size), then INTER_AREA by the
whole factor 2 to ANALYSIS_SIZE x ANALYSIS_SIZE (OpenCV's fast path; a
direct INTER_AREA from 1920x1080 costs 10-50 ms, these two steps well under
one).

- brightness: mean grey / 255
- contrast: standard deviation of grey / 255
- black_level: the 0.5th percentile of grey / 255 (a veiling light or a
  raised offset lifts it while the mean may stay within the normal range)
- sharpness: log10(1 + variance of the Laplacian of grey) (ksize 1)
- colour_rg, colour_bg: (mean R - mean G) / 255, (mean B - mean G) / 255
- orientation: half the L1 distance between the image's gradient
  orientation histogram (Sobel 3x3, cartToPolar in degrees, 8 bins over
  [0, 180), weighted by magnitude, normalised) and the training images' mean
  histogram; 0 = same edge directions, 1 = none in common
- layout: RMS distance between the image's 8x8 grey thumbnail (INTER_AREA
  from the grey copy, normalised to zero mean and unit deviation, deviation
  at least 1) and the nearest training thumbnail; it grows when the camera
  moves or turns

and, per camera window in gnld, the model's own anomaly score, compared with
the scores of the normal images held back from training (`score`).

For each feature drift.json records the training distribution (quantiles,
mean, deviation) and the `median` and `scale` that gnld measures live values
against: z = (value - median) / scale, scale = half the 16-84 % range with a
floor (FLOORS), so a feature that never varied in training (colour on grey
images) still has a finite z.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FORMAT_VERSION = 1
DRIFT_FILE = "drift.json"
ANALYSIS_SIZE = 128
PRESIZE = 2 * ANALYSIS_SIZE
THUMB_SIZE = 8
ORIENTATION_BINS = 8
BLACK_PERCENTILE = 0.005
POLICY_STREAM = 6  # the drift policy's views of the training images: default_rng([seed, POLICY_STREAM])
POLICY_VIEWS = 4  # views per training image in the reference (a turned frame finds a turned thumbnail)
QUANTILES = (0.005, 0.05, 0.16, 0.5, 0.84, 0.95, 0.995)

# Features in drift.json order. Two-sided: both directions are drift;
# one-sided (distances, the score): only larger values are.
TWO_SIDED = ("brightness", "contrast", "black_level", "sharpness", "colour_rg", "colour_bg")
ONE_SIDED = ("orientation", "layout", "score")
# Smallest scale per feature, in the feature's units: a change this large is
# one unit of z even where training never varied.
FLOORS = {
    "brightness": 0.01, "contrast": 0.005, "black_level": 0.01, "sharpness": 0.05,
    "colour_rg": 0.01, "colour_bg": 0.01, "orientation": 0.01, "layout": 0.01, "score": 0.01,
}


class DriftError(ValueError):
    """Bad input for drift statistics, with the file and the fix."""


def _read(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise DriftError(f"{path}: cannot read image (missing, unreadable or not an image); "
                         "remove it from the folder or replace it")
    return img


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """The 8x8 grey thumbnail (64 uint8, row-major) of the grey analysis copy."""
    return cv2.resize(grey, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).ravel()


def normalise(thumb: np.ndarray) -> np.ndarray:
    """Zero mean, unit deviation (deviation at least 1 grey level): layout, not light."""
    t = thumb.astype(np.float64)
    return (t - t.mean()) / max(float(t.std()), 1.0)


def raw_features(bgr: np.ndarray) -> dict[str, Any]:
    """Features of one 8-bit BGR image that need no training reference, plus
    its orientation histogram and 8x8 thumbnail."""
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise DriftError(f"expected an 8-bit BGR image, got {bgr.dtype} {bgr.shape}")
    pre = cv2.resize(bgr, (PRESIZE, PRESIZE), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(pre, (ANALYSIS_SIZE, ANALYSIS_SIZE), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(grey)
    counts = np.bincount(grey.ravel(), minlength=256)
    black = int(np.searchsorted(np.cumsum(counts), BLACK_PERCENTILE * grey.size))
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_64F, ksize=1))
    b, g, r, _ = cv2.mean(small)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    mag, ang = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    a = ang.astype(np.float64).ravel()
    a = np.where(a >= 180.0, a - 180.0, a)
    bins = np.minimum((a / (180.0 / ORIENTATION_BINS)).astype(np.int64), ORIENTATION_BINS - 1)
    hist = np.bincount(bins, weights=mag.astype(np.float64).ravel(), minlength=ORIENTATION_BINS)
    total = hist.sum()
    hist = hist / total if total > 0 else np.full(ORIENTATION_BINS, 1.0 / ORIENTATION_BINS)
    return {
        "brightness": float(mean[0, 0]) / 255.0,
        "contrast": float(std[0, 0]) / 255.0,
        "black_level": black / 255.0,
        "sharpness": float(np.log10(1.0 + float(lap_std[0, 0]) ** 2)),
        "colour_rg": (r - g) / 255.0,
        "colour_bg": (b - g) / 255.0,
        "orientation_hist": hist,
        "thumbnail": thumbnail(grey),
    }


def orientation_distance(hist: np.ndarray, mean_hist: np.ndarray) -> float:
    return 0.5 * float(np.abs(hist - mean_hist).sum())


def layout_distances(thumbs: np.ndarray, reference: np.ndarray, exclude_self: bool = False,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """RMS distance of each thumbnail to its nearest reference thumbnail.
    With `exclude_self` (thumbs is reference) a thumbnail is not compared
    with itself, nor, given `groups`, with another of its group (the views
    of one training image). In chunks, so that thousands of thumbnails fit."""
    out = np.empty(len(thumbs))
    r = reference.astype(np.float64)
    r2 = (r ** 2).sum(axis=1)
    for i in range(0, len(thumbs), 512):
        t = thumbs[i:i + 512].astype(np.float64)
        d2 = np.maximum(((t ** 2).sum(axis=1)[:, None] + r2[None, :] - 2 * t @ r.T) / r.shape[1], 0.0)
        if exclude_self:
            rows = np.arange(i, i + len(t))
            if groups is not None:
                d2[groups[rows][:, None] == groups[None, :]] = np.inf
            else:
                d2[np.arange(len(t)), rows] = np.inf
        out[i:i + len(t)] = np.sqrt(d2.min(axis=1))
    return out


def _summary(name: str, values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, QUANTILES)
    q16, q50, q84 = (float(np.quantile(v, p)) for p in (0.16, 0.5, 0.84))
    return {
        "two_sided": name in TWO_SIDED,
        "median": q50,
        "scale": max((q84 - q16) / 2.0, FLOORS[name]),
        "mean": float(v.mean()), "std": float(v.std()),
        "quantiles": {f"{p:g}": float(x) for p, x in zip(QUANTILES, q)},
        "count": int(v.size),
    }


def image_stats(paths: Sequence[str | Path], drift_policy: str = "legacy", seed: int = 0) -> dict[str, Any]:
    """Statistics of the images at `paths` (the training images) for drift.json:
    one summary per image feature, the mean orientation histogram and the
    thumbnails that `layout` is measured against. Unless the bundle's drift
    policy is legacy, each image also counts in one view of the policy
    (gnl/policy.py, at the model's input size PRESIZE), POLICY_VIEWS times,
    so that drift the model was trained to take as normal stays inside the
    normal range; `layout`'s reference distance of an image skips the
    other views of the same image."""
    from gnl import policy

    if len(paths) < 2:
        raise DriftError(f"{len(paths)} image(s); drift statistics need at least 2 training images")
    images = [_read(p) for p in paths]
    groups = list(range(len(images)))  # which training image each entry shows
    if drift_policy != policy.LEGACY:
        view, rng = policy.view_fn(drift_policy), np.random.default_rng([seed, POLICY_STREAM])
        sized = [cv2.resize(im, (PRESIZE, PRESIZE), interpolation=cv2.INTER_LINEAR) for im in images]
        for k in range(POLICY_VIEWS):
            images += [view(im, rng) for im in sized]
            groups += list(range(len(sized)))
    feats = [raw_features(im) for im in images]
    hists = np.stack([f["orientation_hist"] for f in feats])
    raw_thumbs = np.stack([f["thumbnail"] for f in feats])
    thumbs = np.stack([normalise(t) for t in raw_thumbs])
    mean_hist = hists.mean(axis=0)
    features = {name: _summary(name, [f[name] for f in feats]) for name in TWO_SIDED}
    features["orientation"] = _summary("orientation", [orientation_distance(h, mean_hist) for h in hists])
    # Each training image against the others: the distance a new image of
    # the same scene has to its nearest training image.
    features["layout"] = _summary("layout", layout_distances(thumbs, thumbs, exclude_self=True,
                                                             groups=np.asarray(groups)).tolist())
    return {
        "images": len(paths), "policy_views": len(images) - len(paths),
        "features": features,
        "orientation_mean": mean_hist.round(6).tolist(),
        # 64 hex-coded bytes per image: 8x8 grey, row-major.
        "thumbnails": [t.tobytes().hex() for t in raw_thumbs],
    }


def score_stats(scores: Sequence[float], source: str) -> dict[str, Any]:
    """The feature-level summary: the model's own scores of normal images
    held back from training."""
    if len(scores) < 2:
        raise DriftError(f"{len(scores)} held-back score(s); need at least 2 for the score distribution")
    s = _summary("score", scores)
    s["source"] = source
    s["values"] = [round(float(x), 6) for x in scores]
    return s


def features(bgr: np.ndarray, stats: dict[str, Any]) -> dict[str, float]:
    """All image features of one frame against a drift.json reference (what gnld computes)."""
    f = raw_features(bgr)
    out = {name: f[name] for name in TWO_SIDED}
    out["orientation"] = orientation_distance(f["orientation_hist"], np.asarray(stats["orientation_mean"]))
    ref = np.stack([normalise(np.frombuffer(bytes.fromhex(h), np.uint8)) for h in stats["thumbnails"]])
    out["layout"] = float(layout_distances(normalise(f["thumbnail"])[None], ref)[0])
    return out


def held_back_scores(bundle: Path, paths: Sequence[Path]) -> list[float]:
    """Scores of `paths`, and of the drift policy's views of them that the
    threshold saw (gnl/export.py: policy_views), by the bundle's own
    model.tflite (as gnld scores them)."""
    from gnl.export import policy_views
    from gnl.tflite_runner import Runner

    meta = json.loads((bundle / "model.json").read_text())
    runner = Runner(bundle)
    size = (int(meta["input"]["width"]), int(meta["input"]["height"]))
    views = policy_views(list(paths), size, _policy(meta), int(meta.get("training", {}).get("seed", 0)))
    return [runner.predict(im)[1] for im in [*(_read(p) for p in paths), *views]]


def _policy(meta: dict[str, Any]) -> str:
    """The bundle's drift policy name (bundles from before policies: legacy)."""
    return (meta.get("drift_policy") or {}).get("name", "legacy")


def write_drift(bundle: str | Path, train_paths: Sequence[str | Path],
                held_back: Sequence[str | Path] | None = None, fingerprint: str = "") -> Path:
    """Write BUNDLE/drift.json from the training images and, when given, the
    normal images held back from training (scored with the bundle's model).
    `gnl export` and `gnl drift-stats` call this."""
    bundle = Path(bundle)
    if not (bundle / "model.json").is_file():
        raise DriftError(f"{bundle}: no model.json; point --bundle at an exported bundle folder")
    stats: dict[str, Any] = {"format_version": FORMAT_VERSION, "presize": PRESIZE, "analysis_size": ANALYSIS_SIZE,
                             "thumb_size": THUMB_SIZE, "orientation_bins": ORIENTATION_BINS,
                             "black_percentile": BLACK_PERCENTILE, "data_fingerprint": fingerprint}
    meta = json.loads((bundle / "model.json").read_text())
    stats["drift_policy"] = _policy(meta)
    stats.update(image_stats(list(train_paths), _policy(meta), int(meta.get("training", {}).get("seed", 0))))
    if held_back:
        stats["features"]["score"] = score_stats(held_back_scores(bundle, [Path(p) for p in held_back]),
                                                 f"{len(held_back)} normal images held back from training "
                                                 "(and the drift policy's views of them that the threshold "
                                                 "saw), scored by this bundle's model")
    out = bundle / DRIFT_FILE
    out.write_text(json.dumps(stats, indent=1) + "\n")
    return out


def _held_back_paths(bundle: Path, data: Path) -> list[Path]:
    """Held-back images named in BUNDLE/calibration.json (written by `gnl fit`), if any."""
    cal = bundle / "calibration.json"
    if not cal.is_file():
        return []
    names = json.loads(cal.read_text()).get("held_out", [])
    paths = [data / "train" / "good" / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DriftError(f"{missing[0]}: held-back image named in {cal} is missing; "
                         "pass the --data folder the bundle was trained on")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="data folder (MVTec layout): uses DATA/train/good")
    parser.add_argument("--bundle", required=True, type=Path, help="bundle folder to write drift.json into")


def run(args: argparse.Namespace) -> int:
    from gnl.data import fingerprint, train_images

    paths = train_images(args.data)
    held = _held_back_paths(args.bundle, args.data)
    out = write_drift(args.bundle, paths, held, fingerprint(paths))
    stats = json.loads(out.read_text())
    f = stats["features"]
    print(f"{out}: {stats['images']} training images; brightness {f['brightness']['median']:.3f}, "
          f"sharpness {f['sharpness']['median']:.3f}; "
          + (f"score median {f['score']['median']:.3f} over {f['score']['count']} held-back images"
             if "score" in f else "no score distribution (the bundle has no calibration.json from `gnl fit`)"))
    return 0


# Drift test conditions (`python -m gnl.drift perturb`): the toolchain's
# corruptions (gnl/perturb.py, ImageNet-C severity 3), a turned camera and a
# moved one.
ROTATE_DEG = 15.0      # about the centre, black corners, as perturb.vand2 rotates
MOVED_SHIFT = 0.25     # the ROI slides by this fraction of the width and height


def rotate(bgr: np.ndarray, degrees: float = ROTATE_DEG) -> np.ndarray:
    h, w = bgr.shape[:2]
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(bgr, rot, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def moved(bgr: np.ndarray, shift: float = MOVED_SHIFT) -> np.ndarray:
    """The camera moved (a shifted ROI): the frame starts `shift` of the
    width and height further right and down, so it shows the lower right
    (1 - shift) of the old view; the model resizes it to its input as ever,
    so the part also looks larger."""
    h, w = bgr.shape[:2]
    return np.ascontiguousarray(bgr[int(h * shift):, int(w * shift):])


def inside_light(bgr: np.ndarray) -> np.ndarray:
    """15% more light: inside the product policy's +-20% (gnl/policy.py)."""
    return np.clip(np.rint(bgr.astype(np.float32) * 1.15), 0, 255).astype(np.uint8)


def inside_focus(bgr: np.ndarray) -> np.ndarray:
    """A little out of focus: Gaussian sigma 1 pixel at the model's 256-pixel
    input, scaled to the image, inside the product policy's sigma <= 1.5."""
    sigma = max(bgr.shape[:2]) / PRESIZE
    return cv2.GaussianBlur(bgr, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def inside_rotation(bgr: np.ndarray) -> np.ndarray:
    """A part placed 10 degrees askew: inside the product policy's +-20."""
    return rotate(bgr, 10.0)


def conditions(rng: np.random.Generator) -> dict[str, Any]:
    """The drift test's conditions. Outside every policy (a technician must
    look): ImageNet-C severity 3 brightness, contrast, defocus and noise, a
    moved camera; a 15-degree turn (outside legacy, inside product and
    vand2). Inside the product policy (no warning wanted when the bundle
    was trained with it): inside-light, inside-focus, inside-rotation."""
    from gnl import perturb

    return {"brightness": perturb.brightness, "contrast": perturb.contrast, "defocus": perturb.defocus,
            "noise": lambda b: perturb.noise(b, rng), "rotation": rotate, "moved": moved,
            "inside-light": inside_light, "inside-focus": inside_focus, "inside-rotation": inside_rotation}


def main(argv: list[str] | None = None) -> int:
    """python -m gnl.drift features --reference drift.json IMAGE...   one JSON line per image
    python -m gnl.drift perturb --out DIR IMAGE...                   DIR/<condition>/<name>.png"""
    parser = argparse.ArgumentParser(prog="python -m gnl.drift", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["features", "perturb"])
    parser.add_argument("--reference", type=Path, help="features: drift.json to measure against")
    parser.add_argument("--out", type=Path, help="perturb: folder for the perturbed images")
    parser.add_argument("--seed", type=int, default=0, help="perturb: seed of the noise")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "features":
        if args.reference is None:
            parser.error("features needs --reference drift.json")
        stats = json.loads(args.reference.read_text())
        for p in args.images:
            print(json.dumps({"image": str(p), **features(_read(p), stats)}))
        return 0
    if args.out is None:
        parser.error("perturb needs --out DIR")
    for name, fn in conditions(np.random.default_rng(args.seed)).items():
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for p in args.images:
            cv2.imwrite(str(args.out / name / (p.stem + ".png")), fn(_read(p)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
