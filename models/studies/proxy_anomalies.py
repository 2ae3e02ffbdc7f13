"""Could anomalies made on held-back normal images choose the memory's weight?

    tools/sidroot run python3 models/studies/proxy_anomalies.py CHECKPOINT [DRAWS] [DATA]

The default's weight gives the trained map and the memory the same spread of
image scores on the held-back normal images. memory_weight.py showed, with
MTD's test labels, that a heavier memory scores better on MTD (95.7 clean
with the memory alone against 93.9), and that the synthetic anomalies the
head trained on cannot show it (their AUROC is 99+ at every weight). This
study makes other anomalies on the held-back images, kinds the head did not
train on or not in that form, and prints their AUROC (held-back images
against their anomalous copies) at each weight scale of memory_weight.py.
If one kind peaked at a heavy weight, a normal-only rule could use it.
An image's score here is the sum of the two branches' image scores (the
trained map's plus the scaled weight times the memory's), as
memory_weight.py's synthetic check; the deployed map, and memory_weight.py's
sweep over the test set, add the two maps before the max instead.

Kinds (DRAWS anomalous copies of each held-back image, default 2; one
seeded stream, [0, 77], restarted per kind):
- "perlin": the head's own (gnl.synth: Perlin mask, procedural texture,
  texture opacity 20-100%);
- "faint": the same with the texture at 5-15% opacity;
- "small": the Perlin mask cut to a disc of 3-8% of the short side;
- "small-faint": both;
- "cutpaste-scar": a thin strip of the image itself (10-25% by 1-6% of the
  short side), turned by U(-45, 45) degrees and pasted elsewhere (CutPaste's
  scar, Li et al., CVPR 2021): nothing the head trained on.

Writes DIR/proxy_anomalies.json (DIR: the checkpoint's folder). What it
found: models/RESULTS.md, "The memory's weight, a larger memory, turned
views and rotation TTA".
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_weight import SCALES, branches, with_memory  # noqa: E402

from gnl import synth  # noqa: E402
from gnl.metrics import image_auroc  # noqa: E402
from gnl.preprocess import BLUR_SIGMA, postprocess, read_bgr  # noqa: E402

KINDS = ("perlin", "faint", "small", "small-faint", "cutpaste-scar")
FAINT_OPACITY = (0.05, 0.15)  # of the texture: beta in 1 - that
SMALL_RADIUS = (0.03, 0.08)  # of the short side
SCAR_LENGTH, SCAR_WIDTH = (0.10, 0.25), (0.01, 0.06)  # of the short side


def small(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask within a disc around one of its pixels."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    i = rng.integers(len(ys))
    r = rng.uniform(*SMALL_RADIUS) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    return mask * ((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 <= r * r)


def scar(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thin strip of the image, turned and pasted at another place."""
    h, w = bgr.shape[:2]
    s = min(h, w)
    ph, pw = int(rng.uniform(*SCAR_LENGTH) * s), max(2, int(rng.uniform(*SCAR_WIDTH) * s))
    y0, x0 = rng.integers(0, h - ph), rng.integers(0, w - pw)
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), rng.uniform(-45, 45), 1.0)
    d = int(math.hypot(ph, pw)) + 2  # a square that holds the turned strip
    m[0, 2] += (d - pw) / 2
    m[1, 2] += (d - ph) / 2
    strip = cv2.warpAffine(bgr[y0:y0 + ph, x0:x0 + pw], m, (d, d)).astype(np.float32)
    cover = cv2.warpAffine(np.ones((ph, pw), np.float32), m, (d, d))[..., None]
    y1, x1 = rng.integers(0, h - d), rng.integers(0, w - d)
    out = bgr.astype(np.float32)
    out[y1:y1 + d, x1:x1 + d] = out[y1:y1 + d, x1:x1 + d] * (1 - cover) + strip * cover
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def anomalous(kind: str, bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "cutpaste-scar":
        return scar(bgr, rng)
    mask = synth.perlin_mask(bgr.shape[:2], rng)
    if kind.startswith("small"):
        mask = small(mask, rng)
    tex = synth.texture(bgr, rng)
    beta = 1 - rng.uniform(*FAINT_OPACITY) if "faint" in kind else rng.uniform(0, synth.BETA_MAX)
    return synth.blend(bgr, mask, tex, beta)


def main() -> int:
    if len(sys.argv) not in (2, 3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    ckpt = Path(sys.argv[1])
    draws = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    data = Path(sys.argv[3] if len(sys.argv) > 3 else "../shared/data/mtd")
    found = with_memory(ckpt, data)
    if found is None:
        return 2
    model, spec, held = found
    w0 = float(model.memory.weight)

    def scores(images) -> tuple[np.ndarray, np.ndarray]:
        """Image scores of the trained map and of the memory's unweighted map."""
        pairs = [branches(model, spec, img) for img in images]
        return (np.array([postprocess(g, spec, BLUR_SIGMA)[1] for g, _ in pairs]),
                np.array([postprocess(m, spec, BLUR_SIGMA)[1] for _, m in pairs]))

    images = [read_bgr(p) for p in held]
    ng, nm = scores(images)
    record: dict = {"checkpoint": str(ckpt), "weight": w0, "draws": draws, "held_back": len(held)}
    for kind in KINDS:
        rng = np.random.default_rng([0, 77])
        ag, am = scores(anomalous(kind, im, rng) for im in images for _ in range(draws))
        y = np.r_[np.zeros(len(ng)), np.ones(len(ag))]
        auc = {s: round(100 * image_auroc(y, np.r_[ng + s * w0 * nm, ag + s * w0 * am]), 2) for s in SCALES}
        print(f"{kind:14s} highest at scale {max(auc, key=auc.get)}: {auc}", flush=True)
        record[kind] = {str(s): v for s, v in auc.items()}
    (ckpt.parent / "proxy_anomalies.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
