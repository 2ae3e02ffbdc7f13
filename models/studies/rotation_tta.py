"""Rotation test-time augmentation: does scoring turned copies of a frame pay?

    tools/sidroot run python3 models/studies/rotation_tta.py CHECKPOINT [ANGLES] [DATA]

Scores DATA/test (default ../shared/data/mtd) clean and under VAND 2.0
(seed 0, the same draws as `gnl test`) with a float checkpoint, each image
also turned by every angle of ANGLES (degrees, comma-separated, default
-15,0,15; black corners, gnl.perturb.rotate), and prints image AUROC of the
plain score (angle 0) and of the minimum and the mean over the angles. The
minimum asks "is it anomalous however it is turned?": a normal part seen at
a new angle should look normal in one of the turned copies, a defect in all.
The cost on a device is one invoke per angle. Writes DIR/rotation_tta.json
(DIR: the checkpoint's folder). What it found: models/RESULTS.md, "The
memory's weight, a larger memory, turned views and rotation TTA".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import test_samples  # noqa: E402
from gnl.evaluate import load_model, perturbed  # noqa: E402
from gnl.metrics import image_auroc  # noqa: E402
from gnl.perturb import rotate  # noqa: E402
from gnl.preprocess import BLUR_SIGMA, postprocess, to_tensor  # noqa: E402


def main() -> int:
    if len(sys.argv) not in (2, 3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    ckpt = Path(sys.argv[1])
    angles = [float(a) for a in (sys.argv[2] if len(sys.argv) > 2 else "-15,0,15").split(",")]
    if 0.0 not in angles:
        angles.append(0.0)
    data = Path(sys.argv[3] if len(sys.argv) > 3 else "../shared/data/mtd")
    loaded = load_model(ckpt)
    model, spec = loaded.scorer.model, loaded.scorer.spec
    samples = test_samples(data)
    labels = [int(s.anomalous) for s in samples]
    record: dict = {"checkpoint": str(ckpt), "angles": angles}
    for cond in ("clean", "vand2"):
        scores = []
        for _, img, _ in perturbed(samples, cond, 0):
            x = torch.from_numpy(np.stack([to_tensor(rotate(img, a) if a else img, spec) for a in angles]))
            with torch.inference_mode():
                maps = model(x)[:, 0].numpy()
            scores.append([postprocess(m, spec, BLUR_SIGMA)[1] for m in maps])
        s = np.array(scores)
        record[cond] = s.tolist()
        print(f"{cond:5s} image AUROC plain {100 * image_auroc(labels, s[:, angles.index(0.0)]):.2f}  "
              f"min {100 * image_auroc(labels, s.min(1)):.2f}  mean {100 * image_auroc(labels, s.mean(1)):.2f}",
              flush=True)
    (ckpt.parent / "rotation_tta.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
