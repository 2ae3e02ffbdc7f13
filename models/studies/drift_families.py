"""Which drift family costs what, per drift policy: the rows of models/RESULTS.md
("Drift policies: training on the drift the line will see").

    tools/sidroot run python3 models/studies/drift_families.py --data ../shared/data/mtd \
        --out models/studies/drift_families.json POLICY=CHECKPOINT [POLICY=CHECKPOINT ...]

Each checkpoint (a `gnl fit` checkpoint trained with --drift-policy POLICY) scores
MTD's test set in float, as deployed, under each family of the VAND 2.0
perturbation alone (gnl/perturb.py: horizontal flip, vertical flip, rotation by
U(-20, 20) degrees with black corners, hue alone (ColorJitter's hue, +-0.1),
3x3 Gaussian blur), then under all of it, and clean.
Each family draws from default_rng(0) per image in sorted order, the same for
every checkpoint. Per condition and checkpoint it records:
- the trained map alone (the memory's weight set to 0): image AUROC;
- the whole map (with the memory): image AUROC, false alarms on test/good at
  the checkpoint's own threshold (its calibration: clean held-back images and,
  unless legacy, the policy's views of them), and defects found at it; and
  the same at the threshold from the clean held-back images alone
  (calibration.json's threshold_clean), to show what the policy's threshold trades.
The int8 bundles' figures (what gnld does) come from `gnlctl eval`; these are
the float model's, to split VAND 2.0 into its parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl import perturb  # noqa: E402
from gnl.data import test_samples  # noqa: E402
from gnl.evaluate import load_model  # noqa: E402
from gnl.preprocess import read_bgr  # noqa: E402
from gnl.model import _resize  # noqa: E402
from gnl.preprocess import BLUR_SIGMA, postprocess  # noqa: E402
from gnl.train import auroc, to_batch  # noqa: E402


def both_scores(model, images, spec, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image scores as deployed (max of the resized, blurred map) of the
    whole map and of the trained map alone (no memory), from one pass."""
    model.eval()
    full, alone = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            f = model.features(to_batch(images[i:i + batch], spec, torch.device("cpu")))
            main = model.trained_map(f)
            whole = main + _resize(model.memory(f.teacher[1], f.teacher[2]), main.shape[-2:])
            alone += [postprocess(m, spec, BLUR_SIGMA)[1] for m in main[:, 0].float().numpy()]
            full += [postprocess(m, spec, BLUR_SIGMA)[1] for m in whole[:, 0].float().numpy()]
    return np.array(full), np.array(alone)


def _hue(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ColorJitter's hue alone: U(-0.1, 0.1) of the circle."""
    rgb = im[..., ::-1].astype(np.float32) / 255.0
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + float(rng.uniform(-perturb.JITTER, perturb.JITTER)) * 360.0, 360.0)
    return perturb._to_u8(np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)[..., ::-1])


FAMILIES = {
    "clean": lambda im, rng: im,
    "hflip": lambda im, rng: np.ascontiguousarray(im[:, ::-1]),
    "vflip": lambda im, rng: np.ascontiguousarray(im[::-1]),
    "rotation": lambda im, rng: perturb.rotate(im, float(rng.uniform(-perturb.ROTATE_DEG, perturb.ROTATE_DEG))),
    "hue": _hue,
    "blur": lambda im, rng: cv2.GaussianBlur(im, (perturb.BLUR_KSIZE, perturb.BLUR_KSIZE),
                                             float(rng.uniform(*perturb.BLUR_SIGMA))),
    "vand2": lambda im, rng: perturb.vand2(im, np.zeros(im.shape[:2], np.uint8), rng)[0],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mtd"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None, help="every Nth test image only (a quick check)")
    ap.add_argument("runs", nargs="+", help="POLICY=CHECKPOINT")
    a = ap.parse_args()
    samples = test_samples(a.data)
    if a.limit:
        samples = samples[::a.limit]
    raw = [read_bgr(s.path) for s in samples]
    anomalous = np.array([s.anomalous for s in samples])
    rows, runs = [], {}
    for run in a.runs:
        policy, ckpt = run.split("=", 1)
        loaded = load_model(ckpt)
        model, spec, threshold = loaded.scorer.model, loaded.scorer.spec, loaded.threshold
        cal = Path(ckpt).parent / "calibration.json"  # the clean-only threshold beside the policy's
        clean_threshold = json.loads(cal.read_text()).get("threshold_clean", threshold) if cal.is_file() else threshold
        runs[policy] = ckpt
        for name, family in FAMILIES.items():
            t0 = time.monotonic()
            rng = np.random.default_rng(0)
            images = [cv2.resize(family(im, rng), (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
                      for im in raw]
            full, alone = both_scores(model, images, spec)
            good, bad = full[~anomalous], full[anomalous]
            row = {"policy": policy, "condition": name,
                   "map_auroc": round(100 * auroc(alone[~anomalous], alone[anomalous]), 2),
                   "auroc": round(100 * auroc(good, bad), 2),
                   "false_alarms": int((good >= threshold).sum()), "good": int(good.size),
                   "detected": int((bad >= threshold).sum()), "defects": int(bad.size),
                   "threshold": round(threshold, 4),
                   "false_alarms_at_clean_threshold": int((good >= clean_threshold).sum()),
                   "detected_at_clean_threshold": int((bad >= clean_threshold).sum()),
                   "clean_threshold": round(clean_threshold, 4), "seconds": round(time.monotonic() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        write(a, runs, rows)
    write(a, runs, rows)
    return 0


def write(a: argparse.Namespace, runs: dict, rows: list) -> None:
    """The JSON so far: written after each checkpoint, so a long run keeps what it has."""
    out = {"command": "tools/sidroot run python3 models/studies/drift_families.py --data " + str(a.data) +
           " --out " + str(a.out) + " " + " ".join(a.runs),
           "scored": "float PyTorch, MTD test set, each family from default_rng(0) in sorted order",
           "runs": runs, "rows": rows}
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
