"""How small can the memory of normal patches be and keep its accuracy?

    tools/sidroot run python3 models/studies/lean_memory.py CHECKPOINT [DATA] \
        [--variants 32768x0,4096x32,...] [--out out/study/lean_memory.json]

The default memory (gnl/memory.py: 32,768 teacher descriptors of 152 values,
compared at each of 32x32 locations) costs 5.1 of the bundle's 6.9 GMAC per
frame. This study builds memories of other sizes (SIZE) and projections
(DIMS principal axes of the normal descriptors; 0: the full 152) exactly as
`gnl fit --resume --memory SIZE --memory-dims DIMS` would on CHECKPOINT (the
same candidates: training images clean and in one augmented view, the same
seeded greedy pick, the same weight rule on the held-back images), and
scores MTD's test set clean and under VAND 2.0 (seed 0, `gnl test`'s draws)
in float, as deployed: trained map + weight x memory map, resized, blurred,
max. For each: the memory's multiply-adds per frame, image AUROC, and false
alarms and recall at the threshold the held-back normal images give
(gnl.threshold, float scores; a bundle's comes from its int8 scores).
A variant SIZExDIMSs16 reads the memory at stride 16 instead of 8 (the
descriptors 2x2 average-pooled, candidates and queries alike: a quarter of
the locations); the product has no such option, this asks whether it should.

The trained map, the teacher's descriptors and the candidates are computed
once; each variant then costs its pick and its distances. CHECKPOINT may
have no memory (`gnl fit --memory 0`): only its trained parts are used.
What it found: models/RESULTS.md, "The memory: what it costs and what it keeps".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import test_samples, train_images  # noqa: E402
from gnl.evaluate import load_model, perturbed, verdicts  # noqa: E402
from gnl.holdout import split_holdout  # noqa: E402
from gnl.memory import Memory, balance_weight, descriptors  # noqa: E402
from gnl.metrics import image_auroc  # noqa: E402
from gnl.model import _resize  # noqa: E402
from gnl.preprocess import BLUR_SIGMA, postprocess, to_tensor  # noqa: E402
from gnl.threshold import gumbel_threshold  # noqa: E402
from gnl.train import MEMORY_STREAM, load_images, memory_candidate_rows  # noqa: E402

VARIANTS = ("32768x0,8192x0,4096x0,2048x0,16384x32,8192x32,4096x32,2048x32,4096x64,2048x64,8192x16,4096x16,"
            "16384x0s16,4096x32s16")
BATCH = 16


def branches(model, spec, images):
    """(trained maps [n, h4, w4], descriptors [n, C, h8, w8]) of 8-bit BGR images, in batches."""
    maps, descs = [], []
    with torch.inference_mode():
        for i in range(0, len(images), BATCH):
            x = torch.from_numpy(np.stack([to_tensor(im, spec) for im in images[i:i + BATCH]]))
            f = model.features(x)
            maps.append(model.trained_map(f)[:, 0])
            descs.append(descriptors(f.teacher[1], f.teacher[2]))
    return torch.cat(maps).numpy(), torch.cat(descs)


def memory_macs(size: int, dims: int, channels: int, locations: int) -> int:
    """Multiply-adds of the memory per frame: the projection and the distances."""
    return locations * ((channels * dims if dims else 0) + size * (dims or channels))


def coarser(x: torch.Tensor) -> torch.Tensor:
    """Descriptors [n, C, h, w] at half the resolution (2x2 average)."""
    return torch.nn.functional.avg_pool2d(x, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("data", type=Path, nargs="?", default=Path("../shared/data/mtd"))
    ap.add_argument("--variants", default=VARIANTS, help="SIZExDIMS,... (DIMS 0: the full descriptor)")
    ap.add_argument("--out", type=Path, default=Path("out/study/lean_memory.json"))
    args = ap.parse_args()
    loaded = load_model(args.checkpoint)
    model, spec = loaded.scorer.model, loaded.scorer.spec
    cfg = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["config"]
    seed, size = int(cfg["seed"]), int(cfg["image_size"])
    train_paths, held_paths = split_holdout(train_images(args.data), seed)

    t0 = time.monotonic()
    rng = np.random.default_rng([seed, MEMORY_STREAM])
    with torch.inference_mode():
        candidates = memory_candidate_rows(model, load_images(train_paths, size), spec, rng,
                                           int(cfg.get("rotation_fill", 0)))
    after_views = rng.bit_generator.state  # where the fit's pick starts
    held_g, held_x = branches(model, spec, load_images(held_paths, size))
    samples = test_samples(args.data)
    labels = np.array([int(s.anomalous) for s in samples])
    classes = [s.label for s in samples]
    test = {}
    for cond in ("clean", "vand2"):
        test[cond] = branches(model, spec, [img for _, img, _ in perturbed(samples, cond, 0)])
    channels, h8, w8 = held_x.shape[1:]
    print(f"candidates {tuple(candidates.shape)}, {len(held_paths)} held-back, {len(samples)} test images "
          f"x 2 conditions: {time.monotonic() - t0:.0f} s", flush=True)

    def memory_maps(mem, x):
        with torch.inference_mode():
            return torch.cat([mem.nearest(x[i:i + 64]) for i in range(0, len(x), 64)])[:, 0]

    rows = []
    grid = int(candidates.shape[0] // (h8 * w8))  # candidate images x views, each h8 x w8 locations
    coarse_candidates = None
    for v in args.variants.split(","):
        stride16 = v.endswith("s16")
        n, dims = (int(t) for t in v.removesuffix("s16").split("x"))
        t1 = time.monotonic()
        mem = Memory(n, channels, dims)
        rng.bit_generator.state = after_views
        cand, hx, tx = candidates, held_x, {c: x for c, (_, x) in test.items()}
        if stride16:
            if coarse_candidates is None:
                coarse_candidates = coarser(candidates.reshape(grid, h8, w8, channels).permute(0, 3, 1, 2)) \
                    .permute(0, 2, 3, 1).reshape(-1, channels)
            cand, hx, tx = coarse_candidates, coarser(held_x), {c: coarser(x) for c, x in tx.items()}
        with torch.inference_mode():
            mem.fill(cand, rng)
        pick_s = time.monotonic() - t1
        # The weight as gnl fit sets it: the spread of the trained map's image
        # scores over the memory's (its stride-8 map) on the held-back images.
        main = np.array([postprocess(g, spec, BLUR_SIGMA)[1] for g in held_g])
        held_m = memory_maps(mem, hx)
        weight = balance_weight(main, np.array([postprocess(m.numpy(), spec, BLUR_SIGMA)[1] for m in held_m]))

        def scores(g, m):
            up = _resize(m[:, None], g.shape[-2:])[:, 0].numpy()
            return np.array([postprocess(gi + weight * mi, spec, BLUR_SIGMA)[1] for gi, mi in zip(g, up)])

        threshold = gumbel_threshold(scores(held_g, held_m))
        # Share of the candidates' variance the projection keeps.
        if dims:
            c = cand.double().mean(0)
            step = 1 << 18
            total = sum(float(((cand[i:i + step].double() - c) ** 2).sum()) for i in range(0, len(cand), step))
            kept = round(float(mem.scale) ** 2 * len(cand) / total, 4)
        else:
            kept = 1.0
        locations = h8 * w8 // (4 if stride16 else 1)
        row = {"size": n, "dims": dims, "stride": 16 if stride16 else 8,
               "memory_gmac": memory_macs(n, dims, channels, locations) / 1e9,
               "variance_kept": kept, "weight": weight, "threshold": threshold, "pick_seconds": round(pick_s, 1)}
        for cond, (g, _) in test.items():
            sc = scores(g, memory_maps(mem, tx[cond]))
            v_ = verdicts(classes, sc.tolist(), threshold)
            row[cond] = {"image_auroc": round(100 * image_auroc(labels, sc), 2),
                         "false_alarms": v_["false_alarms"], "good": v_["good_images"],
                         "detected": v_["detected"], "defects": v_["defect_images"]}
        row["seconds"] = round(time.monotonic() - t1, 1)
        rows.append(row)
        c, p = row["clean"], row["vand2"]
        print(f"{n:6d} x {dims or channels:3d}{' s16' if stride16 else ''}: memory {row['memory_gmac']:.3f} GMAC, AUROC clean {c['image_auroc']:.2f} "
              f"VAND2 {p['image_auroc']:.2f}; false alarms {c['false_alarms']}/{c['good']} / "
              f"{p['false_alarms']}/{p['good']}; recall {c['detected']}/{c['defects']} / "
              f"{p['detected']}/{p['defects']}; variance kept {kept:.3f}, weight {weight:.4f}, pick {pick_s:.0f} s, "
              f"{row['seconds']:.0f} s",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
