"""Does scoring square tiles, which keep an image's aspect, beat squashing
the image to a square?

Aspect handling by tiles: the frozen-teacher kNN of `gnl teacher-check` on
square tiles of each image instead of the whole image squashed to a square.

    tools/sidroot run python3 models/studies/tiles.py DATA OUT.json [IMAGE_SIZE] [BANK_SIZE]

MTD's images run from about 130x290 to 600x250, and gnld squashes each to
256x256, so a wide crack image is narrowed 2.3x. Tiling cuts an H x W image
into n = round(long / short) squares of the short side, spread evenly along
the long side (they overlap where long / short is not a whole number), and
resizes each square to IMAGE_SIZE: every tile keeps the image's aspect. An
image's score is the highest score of its tiles. The bank holds the tiles of
the same 200 train/good images as teacher-check's, subsampled to BANK_SIZE
descriptors with the same seed, and the same pooling and distances; the
squash row is teacher-check's own, run here again for a paired reading.
"""
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl.data import load_image, test_samples, train_images  # noqa: E402
from gnl.metrics import image_auroc, image_auroc_per_class  # noqa: E402
from gnl.teacher import bank_subset, build_teacher, image_descriptors, knn_image_scores, nearest_distance  # noqa: E402


def tiles(bgr: np.ndarray, size: int) -> list[np.ndarray]:
    """round(long / short) squares of the short side, evenly spread, each resized to size x size."""
    h, w = bgr.shape[:2]
    short, long_ = min(h, w), max(h, w)
    n = max(1, round(long_ / short))
    starts = [0] if n == 1 else [round(i * (long_ - short) / (n - 1)) for i in range(n)]
    out = []
    for s in starts:
        crop = bgr[:, s:s + short] if w >= h else bgr[s:s + short, :]
        out.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR))
    return out


def tile_features(teacher, paths, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Descriptors of every tile [T, h*w, C] and each tile's image index [T]."""
    crops, owner = [], []
    for i, p in enumerate(paths):
        for t in tiles(load_image(p), size):
            crops.append(t)
            owner.append(i)
    out = [image_descriptors(teacher, crops[i:i + 16], size) for i in range(0, len(crops), 16)]
    return torch.cat(out), np.asarray(owner)


def main() -> int:
    data, out = sys.argv[1], Path(sys.argv[2])
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    bank_size = int(sys.argv[4]) if len(sys.argv) > 4 else 16384
    seed = 0
    train = train_images(data)
    bank_paths = bank_subset(train, 200)
    samples = test_samples(data)
    labels = np.array([s.anomalous for s in samples])
    classes = [s.label for s in samples]
    test_paths = [s.path for s in samples]
    torch.manual_seed(seed)
    teacher = build_teacher()
    result: dict[str, object] = {"image_size": size, "bank_size": bank_size}

    t0 = time.time()
    squash = knn_image_scores(teacher, bank_paths, test_paths, size, bank_size, seed)
    result["squash"] = {"image_auroc": image_auroc(labels, squash),
                        "per_class": image_auroc_per_class(classes, squash), "seconds": round(time.time() - t0)}
    print("squash", result["squash"], flush=True)

    t0 = time.time()
    bank, bank_owner = tile_features(teacher, bank_paths, size)
    bank = bank.flatten(0, 1)
    g = torch.Generator().manual_seed(seed)
    bank = bank[torch.randperm(len(bank), generator=g)[:bank_size]]
    scores = np.full(len(test_paths), -np.inf)
    n_tiles = 0
    for i in range(0, len(test_paths), 16):
        f, owner = tile_features(teacher, test_paths[i:i + 16], size)
        n_tiles += len(owner)
        for q, k in zip(f, owner):
            scores[i + k] = max(scores[i + k], float(nearest_distance(q, bank).max()))
    result["tiles"] = {"image_auroc": image_auroc(labels, scores),
                       "per_class": image_auroc_per_class(classes, scores),
                       "bank_tiles": len(bank_owner), "test_tiles": n_tiles,
                       "seconds": round(time.time() - t0)}
    print("tiles", result["tiles"], flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
