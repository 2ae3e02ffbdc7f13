"""How much does the memory's weight matter, and can normal images pick it?

    tools/sidroot run python3 models/studies/memory_weight.py CHECKPOINT [DATA]

A diagnosis, not a recipe: it reads the test labels, which no default may
use. The map `gnl fit` builds is GNL's trained map + weight x the memory's
distance map (gnl/memory.py); `weight` is set from the held-back normal
images so that both branches' image scores spread alike. This study scores
DATA/test (default ../shared/data/mtd) clean and under VAND 2.0 (seed 0, the
same draws as `gnl test`) with that weight scaled by each of SCALES (0: the
trained map alone; 1000: the memory alone, in effect) and prints image AUROC,
over all and per class. Then it tries weight rules that use the held-back
normal images only:

- "pixel spread": the two maps' pixel standard deviations made equal,
  instead of their image scores' (the scale it would give is printed);
- "max z" / "sum z": each branch's image score standardised on the held-back
  images, then the larger of the two, or their sum;
- the synthetic anomalies `gnl fit` calibrates with (gnl.synth on the
  held-back images, its seeded stream): their AUROC at each scale, to see
  whether they could choose the weight.

Writes DIR/memory_weight.json (DIR: the checkpoint's folder) with every
score. What it found: models/RESULTS.md, "The memory's weight, a larger
memory, turned views and rotation TTA".
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
from gnl.model import _resize  # noqa: E402
from gnl.preprocess import BLUR_SIGMA, postprocess, read_bgr, to_tensor  # noqa: E402
from gnl.synth import synthesize  # noqa: E402
from gnl.train import CALIB_STREAM  # noqa: E402

SCALES = (0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 1000)


def branches(model, spec, bgr):
    """(trained map, memory's unweighted distance map), both at the map's stride."""
    x = torch.from_numpy(to_tensor(bgr, spec))[None]
    with torch.inference_mode():
        f = model.features(x)  # the teacher and the memory run once
        trained = model.trained_map(f)
        mem = _resize(model.memory.distance(f.teacher[1], f.teacher[2]), trained.shape[-2:])
    return trained[0, 0].numpy(), mem[0, 0].numpy()


def with_memory(ckpt: Path, data: Path):
    """(model, spec, held-back normal image paths) of a checkpoint with a
    memory; None, said on stderr, for one without."""
    loaded = load_model(ckpt)
    model, spec = loaded.scorer.model, loaded.scorer.spec
    if model.memory is None:
        print(f"{ckpt}: no memory; build one with gnl fit --memory", file=sys.stderr)
        return None
    held_names = set(json.loads((ckpt.parent / "calibration.json").read_text())["held_out"])
    return model, spec, [p for p in sorted((data / "train" / "good").iterdir()) if p.name in held_names]


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    ckpt = Path(sys.argv[1])
    data = Path(sys.argv[2] if len(sys.argv) == 3 else "../shared/data/mtd")
    found = with_memory(ckpt, data)
    if found is None:
        return 2
    model, spec, held = found
    w0 = float(model.memory.weight)
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)  # for the seed and stroke share of its config
    samples = test_samples(data)
    labels = np.array([int(s.anomalous) for s in samples])
    classes = np.array([s.label for s in samples])
    record: dict = {"checkpoint": str(ckpt), "weight": w0, "scales": list(SCALES)}

    for cond in ("clean", "vand2"):
        scores = {s: [] for s in SCALES}
        for _, img, _ in perturbed(samples, cond, 0):
            g, m = branches(model, spec, img)
            for s in SCALES:
                scores[s].append(postprocess(g + s * w0 * m, spec, BLUR_SIGMA)[1])
        for s in SCALES:
            sc = np.array(scores[s])
            good = sc[classes == "good"]
            per = {str(c): round(100 * image_auroc(np.r_[np.zeros(len(good)), np.ones((classes == c).sum())],
                                                   np.r_[good, sc[classes == c]]), 1)
                   for c in sorted(set(classes)) if c != "good"}
            print(f"{cond:5s} scale {s:<6g} weight {s * w0:.4f} image AUROC {100 * image_auroc(labels, sc):.2f} {per}",
                  flush=True)
        record[cond] = {str(s): v for s, v in scores.items()}

    # Rules from the held-back normal images only.
    hg, hm, pg, pm = [], [], [], []
    held_images = [read_bgr(p) for p in held]
    for im in held_images:
        g, m = branches(model, spec, im)
        ga, gs = postprocess(g, spec, BLUR_SIGMA)
        ma, ms = postprocess(m, spec, BLUR_SIGMA)
        hg.append(gs)
        hm.append(ms)
        pg.append(ga)
        pm.append(ma)
    hg, hm = np.array(hg), np.array(hm)
    pixel_scale = float(np.std(pg) / np.std(pm) / w0)
    print(f"held-back images {len(held)}: image-score spread ratio {hg.std() / hm.std():.4f} "
          f"(the weight: {w0:.4f}); pixel spread ratio gives scale {pixel_scale:.2f}")
    for cond in ("clean", "vand2"):
        g = np.array(record[cond]["0"])
        m = (np.array(record[cond][str(SCALES[-1])]) - g) / (SCALES[-1] * w0)  # approximately the memory alone
        zg, zm = (g - hg.mean()) / hg.std(), (m - hm.mean()) / hm.std()
        print(f"{cond:5s} max z {100 * image_auroc(labels, np.maximum(zg, zm)):.2f}  "
              f"sum z {100 * image_auroc(labels, zg + zm):.2f}", flush=True)

    crng = np.random.default_rng([int(ck["config"]["seed"]), CALIB_STREAM])
    stroke = float(ck["config"].get("stroke_share", 0.0))
    sg, sm = [], []
    for im in held_images:
        g, m = branches(model, spec, synthesize(im, crng, stroke)[0])
        sg.append(postprocess(g, spec, BLUR_SIGMA)[1])
        sm.append(postprocess(m, spec, BLUR_SIGMA)[1])
    y = np.r_[np.zeros(len(held)), np.ones(len(held))]
    synth = {s: round(100 * image_auroc(y, np.r_[hg + s * w0 * hm, np.array(sg) + s * w0 * np.array(sm)]), 2)
             for s in SCALES}
    print("synthetic-anomaly AUROC (held-back images) per scale:", synth)
    record.update({"pixel_spread_scale": pixel_scale, "synthetic_auroc": synth})
    (ckpt.parent / "memory_weight.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
