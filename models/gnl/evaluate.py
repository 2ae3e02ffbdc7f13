"""`gnl test`: score an MVTec-layout test set, clean and perturbed, float and int8.

    gnl test --data DIR --model CKPT [BUNDLE_DIR ...] [--perturb none|vand2|corrupt|all]
             [--json FILE] [--grid FILE.png] [--limit N] [--seed S] [--int8 | --float]
             [--dump DIR] [--device auto|cpu|cuda]

Each `--model` is a checkpoint from `gnl fit` (scored in float by PyTorch)
or a bundle folder (scored by its model.tflite through the TFLite
interpreter, as gnld runs it). Pass a checkpoint and its bundle to see
float and int8 side by side; `--float`/`--int8` keep only that kind.

Every model's raw map goes through `gnl.preprocess.postprocess` (resize to
the input size, Gaussian blur, score = max; BUNDLE.md), the same step gnld
runs. Pixel metrics compare that map with the ground-truth mask resized to
the model input (nearest neighbour), as anomalib and RD4AD evaluate at the
model's resolution. Metrics per model and condition: image AUROC, image
F1Max (VAND 2.0's ranking metric), pixel AUROC, AUPRO to FPR 0.3; the image
AUROC of the other score rule (`image_auroc_topk`: mean of the top 1% of
the blurred map instead of its max); and, at the model's own threshold
(model.json's `threshold.value`, or the checkpoint's calibration), what a
PLC would see: `verdict` = false alarms on the good images and recall per
defect class.

`--dump DIR` (with `--perturb vand2` or `all`) also writes the vand2 test
set exactly as it is scored here (same samples, `--limit`, seed and draw
order) to DIR in the MVTec layout: `test/<label>/<stem>.png` (lossless, so
gnld/gnlctl read the very pixels), `ground_truth/<label>/<stem>_mask.png`
(0/255) and `perturb.json` (`{"perturb": "vand2", "seed": S, "source": DATA,
...}`), written last. `gnlctl eval --data DIR --perturb vand2` scores it in
Go, and `gnl test --data DIR` (no `--perturb`) scores it as plain data,
giving the vand2 numbers of the run that wrote it.

The JSON result's `metrics` has the shape of model.json's `metrics`
({"float": {condition: {...}}, "int8": {...}}), so `gnl export
--metrics-json` can copy it into the bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import nn

from gnl import perturb
from gnl.data import Sample, fingerprint, load_image, load_mask, test_samples
from gnl.metrics import aupro, f1max_threshold, image_auroc, image_f1max, pixel_auroc
from gnl.device import DEVICES, pick_device
from gnl.preprocess import BLUR_SIGMA, InputSpec, postprocess, to_tensor

TOPK_FRACTION = 0.01  # the alternative image score: mean of the top 1% of map pixels
from gnl.report import GridCell, format_table, write_grid

GRID_ROWS = 8


class Scorer(Protocol):
    """Anything that turns an 8-bit BGR frame into the model's raw anomaly map.

    `spec` (input size, normalisation) and `blur_sigma` drive the shared
    post-processing. `gnl.tflite_runner.Runner` and `TorchScorer` fit.
    """

    spec: InputSpec
    blur_sigma: float

    def raw_map(self, bgr: np.ndarray) -> np.ndarray:
        """h x w float map, higher = more anomalous."""
        ...


class TorchScorer:
    """A float PyTorch model (NCHW normalised input -> [1,1,h,w] map) as a `Scorer`."""

    def __init__(self, model: nn.Module, spec: InputSpec, blur_sigma: float = BLUR_SIGMA,
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.spec, self.blur_sigma = model.eval().to(device), spec, blur_sigma
        self.device = device

    def raw_map(self, bgr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(to_tensor(bgr, self.spec))[None].to(self.device)
        with torch.inference_mode():
            out = self.model(x)
        return out.reshape(out.shape[-2], out.shape[-1]).float().cpu().numpy()


@dataclass
class LoadedModel:
    """A scorer with the name its results go under ("float", "int8", "float-tflite")."""

    kind: str
    path: Path
    scorer: Scorer
    threshold: float | None = None  # the model's own: model.json or the checkpoint's calibration


def load_model(path: str | Path, device: torch.device = torch.device("cpu")) -> LoadedModel:
    """A bundle folder (model.json + model.tflite) or a `gnl fit` checkpoint file
    (scored in float by PyTorch on `device`)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.json").is_file():
            raise SystemExit(f"{path}: not a bundle (no model.json); pass a bundle folder or a checkpoint")
        from gnl.tflite_runner import Runner

        runner = Runner(path)
        kind = "int8" if runner.spec.dtype in ("int8", "uint8") or \
            runner.meta.get("quantization", "float32") != "float32" else "float-tflite"
        return LoadedModel(kind, path, runner, float(runner.meta["threshold"]["value"]))
    if not path.is_file():
        raise SystemExit(f"{path}: no such checkpoint or bundle folder")
    from gnl.model import load_checkpoint

    model = load_checkpoint(path)
    size = int(model.config.image_size)
    spec = InputSpec(width=size, height=size, mean=tuple(model.teacher.mean),
                     std=tuple(model.teacher.std))
    calibration = torch.load(path, map_location="cpu", weights_only=True).get("calibration") or {}
    threshold = calibration.get("threshold")
    return LoadedModel("float", path, TorchScorer(model, spec, device=device),
                       None if threshold is None else float(threshold))


@dataclass
class ConditionRun:
    """Scores and maps of one model under one condition."""

    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    scores_topk: list[float] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    grid: dict[int, GridCell] = field(default_factory=dict)

    def metrics(self, threshold: float | None = None) -> dict[str, object]:
        """The four metrics, the F1-optimal threshold, the top-k score's AUROC
        and, given the model's threshold, the verdicts at it."""
        out: dict[str, object] = {
            "image_auroc": image_auroc(self.labels, self.scores),
            "image_f1max": image_f1max(self.labels, self.scores),
            "pixel_auroc": pixel_auroc(self.masks, self.maps),
            "aupro": aupro(self.masks, self.maps),
            "f1max_threshold": f1max_threshold(self.labels, self.scores),
            "image_auroc_topk": image_auroc(self.labels, self.scores_topk),
        }
        if threshold is not None:
            out["verdict"] = verdicts(self.classes, self.scores, threshold)
        return out


def verdicts(classes: Sequence[str], scores: Sequence[float], threshold: float) -> dict[str, object]:
    """What a PLC acting on `score >= threshold` gets: false alarms among the
    good images and recall per defect class (and over all defects)."""
    flagged = np.asarray(scores) >= threshold
    cls = np.asarray(classes)
    good = cls == "good"
    per_class = {c: round(float(flagged[cls == c].mean()), 4) for c in sorted(set(classes)) if c != "good"}
    return {
        "threshold": float(threshold),
        "good_images": int(good.sum()), "false_alarms": int(flagged[good].sum()),
        "false_alarm_rate": round(float(flagged[good].mean()), 4) if good.any() else None,
        "defect_images": int((~good).sum()), "detected": int(flagged[~good].sum()),
        "recall": round(float(flagged[~good].mean()), 4) if (~good).any() else None,
        "recall_per_class": per_class,
    }


def topk_mean(amap: np.ndarray, fraction: float = TOPK_FRACTION) -> float:
    """Mean of the largest `fraction` of the map's pixels (at least one)."""
    flat = amap.ravel()
    k = max(1, int(round(flat.size * fraction)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def perturbed(samples: Sequence[Sample], condition: str,
              seed: int) -> Iterator[tuple[Sample, np.ndarray, np.ndarray]]:
    """(sample, 8-bit BGR image, 0/1 mask) under `condition`, in order.

    The perturbations come from one Generator(seed), drawn in sample order:
    the one place both scoring and `--dump` get their images from.
    """
    rng = np.random.default_rng(seed)
    for s in samples:
        img = load_image(s.path)
        mask = load_mask(s, img.shape[1], img.shape[0])
        img, mask = perturb.apply(condition, img, mask, rng)
        yield s, img, mask


def score_condition(scorer: Scorer, samples: Sequence[Sample], condition: str, seed: int,
                    grid_rows: Sequence[int] = ()) -> ConditionRun:
    """Score every sample under `condition`, perturbations drawn from one Generator(seed)."""
    run = ConditionRun()
    size = (scorer.spec.width, scorer.spec.height)
    for i, (s, img, mask) in enumerate(perturbed(samples, condition, seed)):
        amap, score = postprocess(scorer.raw_map(img), scorer.spec, scorer.blur_sigma)
        run.labels.append(int(s.anomalous))
        run.classes.append(s.label)
        run.scores.append(score)
        run.scores_topk.append(topk_mean(amap))
        run.masks.append(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))
        run.maps.append(amap)
        if i in grid_rows:
            run.grid[i] = GridCell(cv2.resize(img, size, interpolation=cv2.INTER_LINEAR),
                                   run.masks[-1], amap, score)
    return run


DUMP_MARKER = "perturb.json"


def read_marker(data: str | Path) -> dict | None:
    """DATA/perturb.json of a folder written by `--dump`, else None."""
    p = Path(data) / DUMP_MARKER
    return json.loads(p.read_text()) if p.is_file() else None


def dump_condition(samples: Sequence[Sample], condition: str, seed: int, data: str | Path,
                   out: str | Path, limit: int | None = None) -> Path:
    """Write the test set as `score_condition(..., condition, seed)` sees it, MVTec layout.

    Images become PNG (lossless; the name keeps its stem), masks 0/255 PNG.
    `out` must be new, empty, or an earlier dump (replaced). perturb.json
    comes last, so a folder with one is complete.
    """
    out, data = Path(out).resolve(), Path(data).resolve()
    if out == data or data in out.parents:
        raise SystemExit(f"gnl test: --dump {out} is inside --data {data}; dump elsewhere")
    if out.exists():
        if not out.is_dir():
            raise SystemExit(f"gnl test: --dump {out} is a file")
        if any(out.iterdir()):
            if not (out / DUMP_MARKER).is_file():
                raise SystemExit(f"gnl test: --dump {out} is neither empty nor an earlier dump "
                                 f"(no {DUMP_MARKER}); choose a new folder")
            (out / DUMP_MARKER).unlink()
            for sub in ("test", "ground_truth"):
                shutil.rmtree(out / sub, ignore_errors=True)
    names = [(s.label, s.path.stem) for s in samples]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise SystemExit(f"gnl test: two test images test/{dup[0]}/{dup[1]}.* share a stem; "
                         "their PNGs would collide in --dump")
    for s, img, mask in perturbed(samples, condition, seed):
        paths = [(out / "test" / s.label / f"{s.path.stem}.png", img)]
        if s.anomalous:
            paths.append((out / "ground_truth" / s.label / f"{s.path.stem}_mask.png",
                          (mask > 0).astype(np.uint8) * 255))
        for p, a in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(p), a):
                raise SystemExit(f"{p}: cannot write PNG")
    marker = {"perturb": condition, "seed": seed, "source": str(data), "limit": limit,
              "images": len(samples), "anomalous": sum(s.anomalous for s in samples),
              "source_fingerprint": fingerprint([s.path for s in samples], data / "test")}
    (out / DUMP_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def subset(samples: list[Sample], limit: int | None) -> list[Sample]:
    """`limit` samples evenly spaced over the sorted list (so every label stays in)."""
    if limit is None or limit >= len(samples):
        return samples
    idx = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
    return [samples[i] for i in idx]


def grid_rows(samples: Sequence[Sample], n: int = GRID_ROWS) -> list[int]:
    """Rows for the PNG: a quarter good images, the rest defects, evenly spaced."""
    good = [i for i, s in enumerate(samples) if not s.anomalous]
    bad = [i for i, s in enumerate(samples) if s.anomalous]
    n_good = min(len(good), max(1, n // 4))
    n_bad = min(len(bad), n - n_good)
    pick = lambda idx, k: [idx[j] for j in np.linspace(0, len(idx) - 1, k).round().astype(int)] if k else []  # noqa: E731
    return sorted(set(pick(good, n_good) + pick(bad, n_bad)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gnl test`."""
    parser.add_argument("--data", required=True, help="MVTec-layout folder (test/ and ground_truth/)")
    parser.add_argument("--model", required=True, nargs="+",
                        help="checkpoint(s) from gnl fit and/or bundle folder(s)")
    parser.add_argument("--perturb", default="none", choices=perturb.PERTURB_CHOICES,
                        help="none: clean only; vand2: + VAND 2.0; corrupt: + brightness, "
                             "contrast, defocus, noise; all: everything")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbation generator")
    parser.add_argument("--limit", type=int, default=None, help="evaluate N evenly spaced test images")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of heatmaps")
    parser.add_argument("--dump", type=Path, default=None,
                        help="also write the vand2 test set as scored (PNG, MVTec layout, "
                             "perturb.json) to this folder; needs --perturb vand2 or all")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where checkpoints are scored (bundles always run in TFLite on the CPU)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--int8", action="store_true", help="evaluate only the int8 bundle(s)")
    only.add_argument("--float", action="store_true", help="evaluate only the float model(s)")


def run(args: argparse.Namespace) -> int:
    """Evaluate every model under every condition; print a table, write JSON and PNG."""
    device = pick_device(args.device)
    models = [load_model(p, device) for p in args.model]
    if args.int8:
        models = [m for m in models if m.kind == "int8"]
    if args.float:
        models = [m for m in models if m.kind != "int8"]
    kinds = [m.kind for m in models]
    if not models:
        raise SystemExit("gnl test: no model of the requested kind among --model")
    if len(set(kinds)) != len(kinds):
        raise SystemExit(f"gnl test: two models of the same kind ({kinds}); evaluate them separately")
    samples = subset(test_samples(args.data), args.limit)
    conds = perturb.conditions(args.perturb)
    if args.dump is not None and perturb.VAND2 not in conds:
        raise SystemExit("gnl test: --dump writes the vand2 test set; use --perturb vand2 (or all)")
    marker = read_marker(args.data)
    if marker is not None:
        print(f"gnl test: {args.data} is a {marker.get('perturb')} test set written by --dump "
              f"(seed {marker.get('seed')}, from {marker.get('source')}); scoring it as plain data",
              file=sys.stderr)
        if args.perturb != "none":
            print(f"gnl test: warning: --perturb {args.perturb} perturbs it a second time",
                  file=sys.stderr)
    rows = grid_rows(samples) if args.grid else []
    result: dict[str, object] = {
        "data": str(Path(args.data).resolve()),
        "test_fingerprint": fingerprint([s.path for s in samples], Path(args.data).resolve() / "test"),
        "test_images": len(samples), "test_anomalous": sum(s.anomalous for s in samples),
        "perturb": args.perturb, "seed": args.seed,
        "models": {m.kind: str(m.path) for m in models},
    }
    if marker is not None:
        result["data_perturb"] = marker
    if args.dump is not None:
        t0 = time.time()
        dumped = dump_condition(samples, perturb.VAND2, args.seed, args.data, args.dump, args.limit)
        result["dump"] = str(dumped)
        print(f"gnl test: wrote the vand2 test set ({len(samples)} images) to {dumped} "
              f"in {time.time() - t0:.1f} s", file=sys.stderr)
    metrics: dict[str, dict[str, dict[str, float]]] = {m.kind: {} for m in models}
    image_scores: dict[str, dict[str, list[float]]] = {m.kind: {} for m in models}
    runs: dict[tuple[str, str], ConditionRun] = {}
    for cond in conds:
        for m in models:
            t0 = time.time()
            r = score_condition(m.scorer, samples, cond, args.seed, rows)
            metrics[m.kind][cond] = r.metrics(m.threshold)
            image_scores[m.kind][cond] = [round(x, 6) for x in r.scores]
            metrics[m.kind][cond]["seconds"] = round(time.time() - t0, 1)
            print(f"{m.kind:12s} {cond:10s} " + " ".join(
                f"{k} {v:.4f}" for k, v in metrics[m.kind][cond].items() if isinstance(v, float)),
                file=sys.stderr)
            v = metrics[m.kind][cond].get("verdict")
            if isinstance(v, dict):
                print(f"{'':12s} {'':10s} at threshold {v['threshold']:.4f}: false alarms "
                      f"{v['false_alarms']}/{v['good_images']}, recall {v['recall']} "
                      f"{v['recall_per_class']}", file=sys.stderr)
            if rows:
                r.masks, r.maps = [], []  # free the full-set maps; the grid keeps its own
                runs[(m.kind, cond)] = r
    result["metrics"] = metrics
    # Per-image scores (same order as `samples`), for threshold studies.
    result["samples"] = [f"{s.label}/{s.path.name}" for s in samples]
    result["scores"] = image_scores
    print(format_table(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.grid:
        write_grid(args.grid, [f"{samples[r].label}/{samples[r].path.stem}" for r in rows],
                   [load_image(samples[r].path) for r in rows],
                   {f"{k} {c}": [run.grid[r] for r in rows] for (k, c), run in runs.items()})
    return 0
