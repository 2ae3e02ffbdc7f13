"""Which part of VAND 2.0 raises the scores of normal test images?

    tools/sidroot run python3 models/studies/vand2_parts.py CHECKPOINT [DATA]

Scores DATA/test/good (default ../shared/data/mtd) with a `gnl fit`
checkpoint under each part of the VAND 2.0 perturbation alone (gnl.perturb:
horizontal flip, vertical flip, rotation by U(-20, 20) degrees with black
corners, colour jitter, 3x3 Gaussian blur), then under all of it, and prints
per part the false alarms at the checkpoint's threshold (score >= threshold,
as gnld flags a frame) and the median and 90th percentile of the image
score and of the memory's part of it. Each
part draws from default_rng(0). What it found: models/RESULTS.md, "The
memory picked by greedy k-centre".
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl import perturb  # noqa: E402
from gnl.evaluate import load_model  # noqa: E402
from gnl.preprocess import read_bgr  # noqa: E402
from gnl.train import image_scores  # noqa: E402


PARTS = {
    "clean": lambda im, rng: im,
    "hflip": lambda im, rng: np.ascontiguousarray(im[:, ::-1]),
    "vflip": lambda im, rng: np.ascontiguousarray(im[::-1]),
    "rotate": lambda im, rng: perturb.rotate(im, float(rng.uniform(-perturb.ROTATE_DEG, perturb.ROTATE_DEG))),
    "jitter": lambda im, rng: perturb._jitter(im, rng),
    "blur": lambda im, rng: cv2.GaussianBlur(im, (perturb.BLUR_KSIZE, perturb.BLUR_KSIZE),
                                             float(rng.uniform(*perturb.BLUR_SIGMA))),
    "vand2": lambda im, rng: perturb.vand2(im, np.zeros(im.shape[:2], np.uint8), rng)[0],
}


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    ckpt = sys.argv[1]
    data = Path(sys.argv[2] if len(sys.argv) == 3 else "../shared/data/mtd")
    loaded = load_model(ckpt)
    model, spec, threshold = loaded.scorer.model, loaded.scorer.spec, loaded.threshold
    size = spec.width
    raw = [read_bgr(p) for p in sorted((data / "test" / "good").iterdir())]
    for name, part in PARTS.items():
        rng = np.random.default_rng(0)
        images = [cv2.resize(part(im, rng), (size, size), interpolation=cv2.INTER_LINEAR) for im in raw]
        s = image_scores(model, images, spec, 16)
        mem = image_scores(model, images, spec, 16, memory_only=True) if model.memory is not None else np.zeros_like(s)
        print(f"{name:7s} false alarms {int((s >= threshold).sum()):3d}/{len(s)}  score median {np.median(s):.3f} "
              f"p90 {np.quantile(s, .9):.3f}  memory's part median {np.median(mem):.3f} p90 {np.quantile(mem, .9):.3f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
