"""A memory of normal patches beside the GNL map: does it pay, and how big?

    tools/sidroot run python3 models/studies/memory.py DATA VAND2_DATA CHECKPOINT OUT_DIR \
        [--banks random-16384,coreset-16384,random-65536]

The frozen teacher's kNN (PatchCore-style descriptors: stride-8 and upsampled
stride-16 levels, 3x3 average pooling; `gnl teacher-check`'s code) reaches
90 on MTD when its memory holds 65,536 descriptors picked at random. This
study asks three things the kNN readings in RESULTS.md leave open:

1. how it does under VAND 2.0 (the same draws as `gnl test`: VAND2_DATA is
   the folder `gnl test --dump` / `make eval` writes);
2. whether a greedy coreset (PatchCore's k-center selection, the one `gnl
   fit` uses: gnl.memory.coreset) holds as much with fewer descriptors as a
   random pick;
3. whether it adds to the trained GNL map of CHECKPOINT: the two image
   scores, each standardised on the checkpoint's held-back normal images
   (never on test labels), summed.

The bank is built from the checkpoint's own training images (train/good less
its held-back ones), so the held-back images stay unseen by both.
Writes OUT_DIR/scores.npz (every image score) and OUT_DIR/memory.json.
`--views V` adds V augmented views of each bank image (stage 1's
augmentation) to the candidates; `--no-gnl` reuses the trained model's
scores from OUT_DIR/scores.npz. What it found, and the memory `gnl fit`
builds from it (gnl/memory.py): models/RESULTS.md, "A memory of normal
patches".
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import test_samples, train_images  # noqa: E402
from gnl.evaluate import load_model, score_condition  # noqa: E402
from gnl.memory import coreset, descriptors  # noqa: E402
from gnl.metrics import image_auroc, image_auroc_per_class  # noqa: E402
from gnl.teacher import EFFNET, _features, build_teacher, nearest_distance  # noqa: E402

def knn_scores(teacher, paths, bank: torch.Tensor, batch: int = 16) -> np.ndarray:
    """Image score: max over locations of the distance to the nearest bank descriptor."""
    out = []
    for i in range(0, len(paths), batch):
        f, _ = _features(teacher, paths[i:i + batch], 256)
        with torch.no_grad():
            out += [float(nearest_distance(q, bank).max()) for q in f]
    return np.asarray(out)


def augmented_features(teacher, paths, views: int, seed: int, batch: int = 16) -> torch.Tensor:
    """Descriptors of `views` augmented views of each image (stage 1's augmentation)."""
    from gnl.augment import augment
    from gnl.data import load_image
    from gnl.preprocess import InputSpec, to_tensor

    rng = np.random.default_rng([seed, 7])
    spec = InputSpec(width=256, height=256, mean=teacher.mean, std=teacher.std)
    out = []
    jobs = [p for p in paths for _ in range(views)]
    with torch.no_grad():
        for i in range(0, len(jobs), batch):
            x = np.stack([to_tensor(augment(load_image(p), rng), spec) for p in jobs[i:i + batch]])
            _, f8, f16 = teacher(torch.from_numpy(x))
            out.append(descriptors(f8, f16).flatten(2).transpose(1, 2).flatten(0, 1))
    return torch.cat(out)


def standardise(scores: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return (scores - normal.mean()) / (normal.std() + 1e-12)


def report(name, labels, classes, scores) -> dict:
    return {"image_auroc": round(100 * image_auroc(labels, scores), 2),
            "per_class": {k: round(100 * v, 1) for k, v in image_auroc_per_class(classes, scores).items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("vand2_data")
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--banks", default="random-16384,coreset-16384,random-65536",
                    help="SELECTION-SIZE,... (selection: random or coreset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=0,
                    help="augmented views (gnl.augment, stage 1's) of each bank image added to the bank")
    ap.add_argument("--no-gnl", action="store_true", help="reuse the gnl scores of OUT_DIR/scores.npz")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)

    calib = json.loads((Path(a.checkpoint).parent / "calibration.json").read_text())
    held_names = set(calib["held_out"])
    train = train_images(a.data)
    held = [p for p in train if p.name in held_names]
    bank_paths = [p for p in train if p.name not in held_names]
    assert len(held) == len(held_names), "held-back images not found in DATA/train/good"
    sets = {"clean": test_samples(a.data), "vand2": test_samples(a.vand2_data)}
    labels = {k: np.array([s.anomalous for s in v], np.int64) for k, v in sets.items()}
    classes = {k: [s.label for s in v] for k, v in sets.items()}
    scores: dict[str, np.ndarray] = {}
    result: dict[str, object] = {"bank_images": len(bank_paths), "held_back": len(held)}

    # The trained model's image scores (float), as `gnl test` computes them.
    t0 = time.time()
    if a.no_gnl:
        old = np.load(out / "scores.npz")
        scores.update({k: old[k] for k in old.files if k.startswith("gnl/")})
    else:
        model = load_model(a.checkpoint)
        for k, samples in sets.items():
            scores[f"gnl/{k}"] = np.asarray(score_condition(model.scorer, samples, "clean", 0).scores)
        held_samples = [type(sets["clean"][0])(path=p, label="good", mask_path=None) for p in held]
        scores["gnl/held"] = np.asarray(score_condition(model.scorer, held_samples, "clean", 0).scores)
        print(f"gnl scored ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)

    teacher = build_teacher(EFFNET).eval()
    t0 = time.time()
    feats = _features(teacher, bank_paths, 256)[0].flatten(0, 1)
    if a.views:
        feats = torch.cat([feats, augmented_features(teacher, bank_paths, a.views, a.seed)])
    print(f"bank features {tuple(feats.shape)} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    result["descriptors"] = int(feats.shape[0])
    timing = {}
    for spec in a.banks.split(","):
        sel, n = spec.split("-")[0], int(spec.split("-")[1])
        t0 = time.time()
        if sel == "random":
            g = torch.Generator().manual_seed(a.seed)
            idx = torch.randperm(len(feats), generator=g)[:n].numpy()
        else:
            idx = coreset(feats, n, np.random.default_rng(a.seed)).numpy()  # what gnl fit keeps
        bank = feats[torch.from_numpy(idx)].contiguous()
        t_sel = time.time() - t0
        name = f"knn-{sel}-{n}" + (f"-aug{a.views}" if a.views else "")
        for k, samples in sets.items():
            scores[f"{name}/{k}"] = knn_scores(teacher, [s.path for s in samples], bank)
        scores[f"{name}/held"] = knn_scores(teacher, held, bank)
        timing[name] = {"select_s": round(t_sel), "total_s": round(time.time() - t0)}
        print(f"{name}: {timing[name]}", file=sys.stderr, flush=True)
        np.savez(out / "scores.npz", **scores)

    for name in sorted({k.split("/")[0] for k in scores}):
        row = {}
        for k in sets:
            row[k] = report(name, labels[k], classes[k], scores[f"{name}/{k}"])
        if name != "gnl":
            for k in sets:
                fused = (standardise(scores[f"gnl/{k}"], scores["gnl/held"])
                         + standardise(scores[f"{name}/{k}"], scores[f"{name}/held"]))
                row[f"{k}+gnl"] = report(name, labels[k], classes[k], fused)
        result[name] = row
    result["timing"] = timing
    (out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
