"""How does the stage-1 student's separation change epoch by epoch, and does
any signal a recipe could use (normal images only) follow it?

    # 1. the default recipe's stage 1, with the trainable weights kept after every epoch
    tools/sidroot run python3 models/studies/epochs.py train ../shared/data/mtd out/study/epochs --epochs 26
    # 2. every kept epoch scored (distance map only, as stage 1 has no head yet)
    tools/sidroot run python3 models/studies/epochs.py score ../shared/data/mtd out/study/epochs out/study/epochs.json
    # 3. the default's segmentation head trained on for more steps, then read with the head
    tools/sidroot run python3 models/studies/epochs.py seg out/model/checkpoint.pt ../shared/data/mtd out/study/seg --seg-steps 1500 --max-minutes 60
    tools/sidroot run python3 models/studies/epochs.py score --full ../shared/data/mtd out/study/seg out/study/seg.json out/model/checkpoint.pt
    # 4. a fresh head trained on the default's student, per head seed and stage-2 schedule
    tools/sidroot run python3 models/studies/epochs.py head out/model/checkpoint.pt ../shared/data/mtd out/study/head-cosine-1 --head-seed 1 --seg-lr-schedule cosine
    tools/sidroot run python3 models/studies/epochs.py score --full ../shared/data/mtd out/study/head-cosine-1 out/study/head-cosine-1.json
    # (any `gnl fit` stage-2 option passes through, e.g. --stroke-share 0.5 for thin-stroke anomalies,
    #  --seg-augment 0.5 for augmented images in the head's training)

`train` runs `gnl fit` with its defaults (seed, width, batch, augmentation)
but no segmentation head steps and no export, and saves
OUT/epochs/epoch-NN.pt (the trainable state dict) after each epoch; with
the same seed its epochs are the default bundle's.
`seg` continues stage 2 (the segmentation head) of a finished checkpoint
for more steps, keeping the head every 300 steps; `score --full` then reads
the deployed map (distance + head) instead of the distance map alone.
`head` trains stage 2 from scratch on a finished checkpoint's student
(bottleneck and student loaded, the head initialised and its synthetic
anomalies drawn from --head-seed; the training/held-back split stays the
checkpoint's) and keeps the final head, so that head seeds and stage-2
options can be compared on one student.
`score` reads, for every kept epoch: the image AUROC of the distance map on
the data set's test split (clean and VAND 2.0, the labels: reference only)
and three label-free signals on the held-back normal images: their mean
score (what the plateau rule watches), and the AUROC against two
synthetic-anomaly versions of each (gnl.synth) and against VAND 2.0-style
perturbed versions of themselves (how much drift alone moves the scores).

A one-off reading for models/RESULTS.md, not part of the toolchain.
"""
import argparse, json, sys, time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gnl import train as gtrain  # noqa: E402
from gnl.data import fingerprint, test_samples, train_images  # noqa: E402
from gnl.evaluate import perturbed  # noqa: E402
from gnl.metrics import image_auroc, image_auroc_per_class  # noqa: E402
from gnl.model import GNLConfig, build_model  # noqa: E402
from gnl import perturb  # noqa: E402
from gnl.preprocess import InputSpec  # noqa: E402
from gnl.synth import synthesize  # noqa: E402

SEG_KEEP_EVERY = 300
SYNTH_SEED, PERTURB_SEED, TEST_SEED = 123, 321, 0  # TEST_SEED: gnl test's VAND 2.0 draws


def keep_snapshots(keep: Path, name: Callable[[gtrain.Trainer], str | None]) -> None:
    """Make every Trainer.save also write KEEP/name(trainer) (the trainable
    state dict and where training was), once per name; None: keep nothing."""
    keep.mkdir(parents=True, exist_ok=True)
    save = gtrain.Trainer.save

    def save_and_keep(self: gtrain.Trainer) -> None:
        save(self)
        n = name(self)
        if n is not None and not (keep / n).exists():
            torch.save({"config": self.cfg, "state_dict": self.model.trainable_state_dict(),
                        "epoch": self.epoch, "seg_step": self.seg_step,
                        "held_out": [p.name for p in self.held_paths], "at": time.strftime("%H:%M:%S")}, keep / n)

    gtrain.Trainer.save = save_and_keep


def train(argv: list[str]) -> None:
    data, out, rest = argv[0], Path(argv[1]), argv[2:]
    parser = argparse.ArgumentParser()
    gtrain.add_arguments(parser)
    args = parser.parse_args(["--data", data, "--out", str(out), "--seg-steps", "0", "--patience", "0",
                              "--max-minutes", "600", "--no-export", *rest])
    keep_snapshots(out / "epochs", lambda tr: f"epoch-{tr.epoch:02d}.pt" if tr.epoch else None)
    gtrain.fit(args)


def seg(argv: list[str]) -> None:
    """Stage 2 continued on a finished checkpoint (copied into OUT first), the
    head's trainable state kept every SEG_KEEP_EVERY steps."""
    ckpt, data, out, rest = Path(argv[0]), argv[1], Path(argv[2]), argv[3:]
    prev = torch.load(ckpt, map_location="cpu", weights_only=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(prev, out / gtrain.CHECKPOINT)
    parser = argparse.ArgumentParser()
    gtrain.add_arguments(parser)
    args = parser.parse_args(["--data", data, "--out", str(out), "--resume", "--epochs", str(prev["epoch"]),
                              "--no-export", *rest])
    keep_snapshots(out / "epochs",
                   lambda tr: f"seg-{tr.seg_step:05d}.pt" if tr.seg_step % SEG_KEEP_EVERY == 0 else None)
    gtrain.fit(args)


def head(argv: list[str]) -> None:
    """Stage 2 from step 0 on CKPT's student with a head seeded by --head-seed."""
    ckpt, data, out = Path(argv[0]), argv[1], Path(argv[2])
    own = argparse.ArgumentParser()
    own.add_argument("--head-seed", type=int, required=True)
    mine, rest = own.parse_known_args(argv[3:])
    prev = torch.load(ckpt, map_location="cpu", weights_only=True)
    c = prev["config"]
    parser = argparse.ArgumentParser()
    gtrain.add_arguments(parser)
    args = parser.parse_args(["--data", data, "--out", str(out), "--no-export", "--max-minutes", "600",
                              "--backbone", c["backbone"], "--seed", str(c["seed"]), "--batch", str(c["batch"]),
                              "--image-size", str(c["image_size"]), "--student-width", str(c["student_width"]), *rest])
    out.mkdir(parents=True, exist_ok=True)
    paths = train_images(data)
    tr = gtrain.Trainer(args, paths, fingerprint(paths), None)
    tr.model.load_trainable_state_dict(prev["state_dict"])  # the student; the head is re-initialised next
    torch.manual_seed(mine.head_seed)
    for m in tr.model.segmentation.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    tr.seg_rng = np.random.default_rng([mine.head_seed, gtrain.SEG_STREAM])
    tr.epoch = prev["epoch"]
    keep_snapshots(out / "epochs", lambda t: f"seg-{t.seg_step:05d}.pt" if t.seg_step == args.seg_steps else None)
    t0 = time.monotonic()
    tr.stage2()
    print(f"head seed {mine.head_seed}, {tr.cfg['seg_lr_schedule']}, stroke share {tr.cfg['stroke_share']}, "
          f"augmented share {tr.cfg['seg_augment']}: "
          f"{tr.seg_step} steps in "
          f"{(time.monotonic() - t0) / 60:.1f} min", flush=True)


def score(argv: list[str]) -> None:
    full = "--full" in argv  # the deployed map (distance + segmentation head), not the distance map alone
    argv = [a for a in argv if a != "--full"]
    data, out, out_json = argv[0], Path(argv[1]), Path(argv[2])
    snaps = sorted((out / "epochs").glob("*.pt")) + [Path(p) for p in argv[3:]]
    first = torch.load(snaps[0], map_location="cpu", weights_only=True)
    model = build_model(GNLConfig.from_dict(first["config"])).eval()
    size = model.config.image_size
    spec = InputSpec(size, size, mean=tuple(model.teacher.mean), std=tuple(model.teacher.std))

    held_names = set(first["held_out"])
    held = [p for p in train_images(data) if p.name in held_names]
    normal = gtrain.load_images(held, size)
    srng = np.random.default_rng(SYNTH_SEED)
    synth = [synthesize(b, srng)[0] for b in normal for _ in range(2)]
    prng = np.random.default_rng(PERTURB_SEED)
    drifted = [perturb.apply("vand2", b, np.zeros(b.shape[:2], np.float32), prng)[0] for b in normal for _ in range(2)]
    samples = test_samples(data)
    labels = np.array([s.anomalous for s in samples], int)
    classes = np.array([s.label for s in samples])
    test = {c: [img for _, img, _ in perturbed(samples, c, TEST_SEED)] for c in ("clean", "vand2")}

    def scores(imgs: list[np.ndarray]) -> np.ndarray:
        return gtrain.image_scores(model, imgs, spec, 16, distance_only=not full)

    rows = []
    for snap in snaps:
        ck = torch.load(snap, map_location="cpu", weights_only=True)
        model.load_trainable_state_dict(ck["state_dict"])
        sn, ss, sd = scores(normal), scores(synth), scores(drifted)
        row = {"snapshot": str(snap), "epoch": ck["epoch"], "seg_step": ck.get("seg_step"),
               "normal_score": round(float(sn.mean()), 4),
               "synthetic_auroc": round(gtrain.auroc(sn, ss), 4), "drift_auroc": round(gtrain.auroc(sn, sd), 4)}
        record(rows, row, labels, classes, {c: scores(imgs) for c, imgs in test.items()}, out_json)


def record(rows: list[dict], row: dict, labels: np.ndarray, classes: np.ndarray,
           test_scores: dict[str, np.ndarray], out_json: Path) -> None:
    """Add the test AUROC (overall and per class) of each condition's scores
    to row, append it, print it and rewrite out_json with every row so far."""
    for c, st in test_scores.items():
        row[f"test_{c}"] = round(image_auroc(labels, st), 4)
        row[f"test_{c}_per_class"] = image_auroc_per_class(classes, st)
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("per_class")}), flush=True)
    out_json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    {"train": train, "seg": seg, "head": head, "score": score}[sys.argv[1]](sys.argv[2:])
