"""Does averaging the maps of independently trained segmentation heads help?

    tools/sidroot run python3 models/studies/heads.py out/model/checkpoint.pt ../shared/data/mtd out/study/heads.json \
        out/study/head-constant-{1,2,3}/epochs/seg-00600.pt out/study/head-cosine-{1,2,3}/epochs/seg-00600.pt

Every head here was trained on the same student (CKPT's; `epochs.py head`
trains them), so the distance map is computed once per image and each
head's sigmoid map once; an ensemble's map is the distance map plus the
mean of its heads' maps, post-processed and scored as gnld does (max of the
resized, blurred map). CKPT's own head is head "default". Reads image
AUROC on the test split (clean and VAND 2.0 with `gnl test`'s draws;
labels: reference only) and the label-free synthetic AUROC on the
held-back normal images, for every single head, every three of the
trained heads, all trained heads, and all heads with CKPT's own.

A one-off reading for models/RESULTS.md, not part of the toolchain.
"""
import itertools, sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl import train as gtrain  # noqa: E402
from gnl.data import test_samples, train_images  # noqa: E402
from gnl.evaluate import perturbed  # noqa: E402
from gnl.model import GNLConfig, build_model, segmentation_input  # noqa: E402
from gnl.preprocess import BLUR_SIGMA, InputSpec, postprocess  # noqa: E402
from gnl.synth import synthesize  # noqa: E402
from epochs import record  # noqa: E402  (this folder is sys.path[0] when run as a script)

SYNTH_SEED, TEST_SEED = 123, 0  # as epochs.py score; TEST_SEED: gnl test's VAND 2.0 draws


def main(ckpt: Path, data: str, out_json: Path, snaps: list[Path]) -> None:
    prev = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = build_model(GNLConfig.from_dict(prev["config"])).eval()
    model.load_trainable_state_dict(prev["state_dict"])
    size = model.config.image_size
    spec = InputSpec(size, size, mean=tuple(model.teacher.mean), std=tuple(model.teacher.std))
    seg = lambda sd: {k.removeprefix("segmentation."): v for k, v in sd.items() if k.startswith("segmentation.")}
    heads = {"default": seg(prev["state_dict"])}
    for p in snaps:
        heads[p.parent.parent.name] = seg(torch.load(p, map_location="cpu", weights_only=True)["state_dict"])

    held_names = set(prev["held_out"])
    normal = gtrain.load_images([p for p in train_images(data) if p.name in held_names], size)
    srng = np.random.default_rng(SYNTH_SEED)
    synth = [synthesize(b, srng)[0] for b in normal for _ in range(2)]
    samples = test_samples(data)
    labels = np.array([s.anomalous for s in samples], int)
    classes = np.array([s.label for s in samples])
    sets = {"normal": normal, "synth": synth}
    sets |= {c: [img for _, img, _ in perturbed(samples, c, TEST_SEED)] for c in ("clean", "vand2")}

    # per set: the distance map [N,h,w] and each head's sigmoid map [N,h,w]
    maps: dict[str, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        for name, imgs in sets.items():
            dist, per_head = [], {h: [] for h in heads}
            for i in range(0, len(imgs), 16):
                f = model.features(gtrain.to_batch(imgs[i:i + 16], spec, "cpu"), seg=False)
                dist.append(model.distance_map(f)[:, 0].numpy())
                inp = segmentation_input(f.teacher, f.student)
                for h, sd in heads.items():
                    model.segmentation.load_state_dict(sd)
                    per_head[h].append(torch.sigmoid(model.segmentation(inp))[:, 0].numpy())
            maps[name] = {"dist": np.concatenate(dist)} | {h: np.concatenate(v) for h, v in per_head.items()}
            print(f"{name}: {len(imgs)} images", flush=True)

    def scores(name: str, members: tuple[str, ...]) -> np.ndarray:
        m = maps[name]["dist"] + np.mean([maps[name][h] for h in members], axis=0)
        return np.array([postprocess(x, spec, BLUR_SIGMA)[1] for x in m])

    names = list(heads)
    trained = [h for h in names if h != "default"]
    ensembles = [(h,) for h in names]
    ensembles += [tuple(c) for c in itertools.combinations(trained, 3)]  # every 3 of the fresh heads
    ensembles += [tuple(trained), tuple(names)]
    rows = []
    for members in ensembles:
        sn, ss = scores("normal", members), scores("synth", members)
        row = {"heads": list(members), "synthetic_auroc": round(gtrain.auroc(sn, ss), 4)}
        record(rows, row, labels, classes, {c: scores(c, members) for c in ("clean", "vand2")}, out_json)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
