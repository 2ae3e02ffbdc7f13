"""`gnl fit`: train GNL (or the RD4AD baseline) on the normal images of an
MVTec-layout folder, calibrate a threshold, and export a bundle.

    gnl fit --data DIR --out OUT [--backbone efficientnet-lite0] [--method gnl|rd4ad]
            [--epochs 80] [--steps-per-epoch N] [--image-size 256] [--batch 16]
            [--seed 111] [--seg-steps 300] [--max-minutes 32] [--resume] [--no-export]

Stage 1 (RD4AD, Deng & Li 2022; GNL losses, see losses.py): bottleneck and
student learn to reproduce the frozen teacher's features. Every batch holds a
clean and an augmented view (augment.py) of each normal image; Adam, lr 0.005,
betas (0.5, 0.999), as RD4AD.
Stage 2 (DeSTSeg, Zhang et al. 2023): the student is frozen and the
segmentation head learns DRAEM-style synthetic anomalies (synth.py) with
focal + L1 loss; SGD, momentum 0.9, weight decay 1e-4, lr 0.1 for the residual
blocks and 0.01 for the ASPP head (DeSTSeg's `lr_res`/`lr_seghead`).

GNL trains 80 epochs with a WideResNet50 teacher on a GPU; on a small CPU
`--max-minutes` bounds the two stages (stage 1 gets 70% of it when there is a
segmentation head) and train.json records how far training got.
About 10% of train/good (seeded) is held back: after training their image
scores, clean and with synthetic anomalies, give the normal-quantile
threshold and a synthetic-anomaly AUROC (OUT/calibration.json).

Outputs: OUT/checkpoint.pt (written after every epoch; `--resume` continues
from it), OUT/train.json, OUT/calibration.json and, unless `--no-export`,
the bundle (gnl/export.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.stats import rankdata
from tqdm import tqdm

from gnl.augment import augment
from gnl.data import DatasetError, fingerprint, train_images
from gnl.losses import distillation_loss, segmentation_loss
from gnl.model import GNL, METHODS, GNLConfig, build_model
from gnl.preprocess import BLUR_SIGMA, IMAGE_SIZE, InputSpec, postprocess, read_bgr, to_tensor
from gnl.synth import synthesize
from gnl.teacher import BACKBONES

CHECKPOINT = "checkpoint.pt"
STAGE1_SHARE = 0.7  # of --max-minutes, when there is a stage 2
SEG_CHECKPOINT_EVERY = 25  # stage-2 steps between checkpoints / loss records
SEG_ANOMALY_P = 0.5  # share of stage-2 images given a synthetic anomaly
HOLDOUT_FRACTION = 0.1
NORMAL_QUANTILE = 0.995
CALIB_SEED_OFFSET = 1  # synthetic anomalies for calibration: seed + 1, fixed


class FitError(RuntimeError):
    """A problem with the command line or the output folder, with the fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--data", required=True, type=Path, help="MVTec-layout folder; only train/good is read")
    a("--out", required=True, type=Path, help="output folder: checkpoint.pt, train.json, calibration.json, bundle")
    a("--backbone", default="efficientnet-lite0", choices=BACKBONES, help="frozen teacher")
    a("--method", default="gnl", choices=METHODS, help="gnl (with segmentation head) or rd4ad (without)")
    a("--epochs", type=int, default=80, help="stage-1 epochs (GNL's 80); --max-minutes may stop earlier")
    a("--steps-per-epoch", type=int, default=None, help="stage-1 steps per epoch (default: one pass)")
    a("--image-size", type=int, default=IMAGE_SIZE, help="square input size, a multiple of 32")
    a("--batch", type=int, default=16, help="normal images per step (each gives a clean and an augmented view)")
    a("--seed", type=int, default=111)
    a("--seg-steps", type=int, default=300, help="stage-2 (segmentation head) steps")
    a("--max-minutes", type=float, default=32.0,
      help="time budget for both training stages (calibration and export come after)")
    a("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    a("--no-export", action="store_true", help="stop after the checkpoint and calibration")


def run(args: argparse.Namespace) -> int:
    try:
        fit(args)
    except (DatasetError, FitError) as e:
        print(f"gnl fit: {e}", file=sys.stderr)
        return 2
    return 0


def split_holdout(paths: Sequence[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """(train, held_out): a seeded ~10% of the images held back for calibration."""
    n_hold = max(1, round(len(paths) * HOLDOUT_FRACTION))
    held = set(np.random.default_rng(seed).permutation(len(paths))[:n_hold].tolist())
    return ([p for i, p in enumerate(paths) if i not in held],
            [p for i, p in enumerate(paths) if i in held])


def load_images(paths: Sequence[Path], size: int) -> list[np.ndarray]:
    """8-bit BGR images resized (INTER_LINEAR, as preprocess) to size x size."""
    return [cv2.resize(read_bgr(p), (size, size), interpolation=cv2.INTER_LINEAR)
            for p in tqdm(paths, desc="reading images", disable=None, leave=False)]


def to_batch(images: Sequence[np.ndarray], spec: InputSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([to_tensor(im, spec) for im in images]))


def image_scores(model: GNL, images: Sequence[np.ndarray], spec: InputSpec, batch: int) -> np.ndarray:
    """Image scores as deployed: max of the resized, blurred map (BUNDLE.md)."""
    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            maps = model(to_batch(images[i:i + batch], spec))[:, 0].numpy()
            scores += [postprocess(m, spec, BLUR_SIGMA)[1] for m in maps]
    return np.array(scores)


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count 1/2)."""
    ranks = rankdata(np.concatenate([negatives, positives]))
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _config(args: argparse.Namespace, spec: InputSpec, model_cfg: GNLConfig) -> dict[str, Any]:
    """Everything needed to rebuild and retrain the model (checkpoint `config`)."""
    return {
        **model_cfg.as_dict(),
        "channel_order": spec.channel_order, "mean": list(spec.mean), "std": list(spec.std),
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "batch": args.batch,
        "seed": args.seed, "lr": 0.005, "betas": [0.5, 0.999], "top_k": 10,
        "seg_steps": args.seg_steps, "seg_lr_res": 0.1, "seg_lr_head": 0.01, "seg_momentum": 0.9,
        "seg_weight_decay": 1e-4, "seg_anomaly_p": SEG_ANOMALY_P, "focal_gamma": 4.0,
        "holdout_fraction": HOLDOUT_FRACTION, "normal_quantile": NORMAL_QUANTILE,
        "max_minutes": args.max_minutes,
    }


def _optimizers(model: GNL, cfg: dict[str, Any]) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    distill = torch.optim.Adam([*model.bottleneck.parameters(), *model.student.parameters()],
                               lr=cfg["lr"], betas=tuple(cfg["betas"]))
    seg = None
    if model.segmentation is not None:
        seg = torch.optim.SGD(
            [{"params": model.segmentation.res.parameters(), "lr": cfg["seg_lr_res"]},
             {"params": model.segmentation.head.parameters(), "lr": cfg["seg_lr_head"]}],
            lr=cfg["seg_lr_head"], momentum=cfg["seg_momentum"], weight_decay=cfg["seg_weight_decay"])
    return distill, seg


def fit(args: argparse.Namespace) -> None:
    """Train, calibrate, and export (see the module docstring)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    paths = train_images(args.data)
    if len(paths) < 2:
        raise DatasetError(f"{Path(args.data) / 'train' / 'good'}: {len(paths)} image; need at least 2 "
                           "(10% are held back to calibrate the threshold)")
    data_fp = fingerprint(paths)

    prev: dict[str, Any] | None = None
    if args.resume:
        if not ckpt_path.is_file():
            raise FitError(f"{ckpt_path}: no checkpoint to resume; run without --resume to start afresh")
        prev = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if prev["fingerprint"] != data_fp:
            raise FitError(f"{args.data}: train/good differs from the data {ckpt_path} was trained on; "
                           "resume with the same data or start afresh without --resume")
        # The architecture and the data order come from the checkpoint; budgets from this command line.
        c = prev["config"]
        args.backbone, args.method, args.image_size, args.batch, args.seed = (
            c["backbone"], c["method"], c["image_size"], c["batch"], c["seed"])
        args.steps_per_epoch = args.steps_per_epoch or c["steps_per_epoch"]

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    try:
        model_cfg = GNLConfig(backbone=args.backbone, method=args.method, image_size=args.image_size)
    except ValueError as e:
        raise FitError(str(e)) from e
    model = build_model(model_cfg)
    spec = InputSpec(args.image_size, args.image_size, mean=tuple(model.teacher.mean), std=tuple(model.teacher.std))
    cfg = _config(args, spec, model_cfg)
    opt_distill, opt_seg = _optimizers(model, cfg)

    train_paths, held_paths = split_holdout(paths, args.seed)
    history: dict[str, list[dict[str, Any]]] = {"stage1": [], "stage2": [], "runs": []}
    epoch, seg_step = 0, 0
    if prev is not None:
        model.load_trainable_state_dict(prev["state_dict"])
        opt_distill.load_state_dict(prev["optimizer"]["distill"])
        if opt_seg is not None:
            opt_seg.load_state_dict(prev["optimizer"]["seg"])
        rng.bit_generator.state = prev["rng"]["numpy"]
        torch.set_rng_state(prev["rng"]["torch"])
        history, epoch, seg_step = prev["history"], prev["epoch"], prev["seg_step"]
        print(f"gnl fit: resuming {ckpt_path} at epoch {epoch}, segmentation step {seg_step}", file=sys.stderr)

    def save() -> None:
        torch.save({
            "config": cfg, "state_dict": model.trainable_state_dict(), "epoch": epoch, "seg_step": seg_step,
            "optimizer": {"distill": opt_distill.state_dict(),
                          "seg": opt_seg.state_dict() if opt_seg is not None else None},
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "history": history, "fingerprint": data_fp, "images": len(paths),
            "held_out": [p.name for p in held_paths],
        }, ckpt_path)

    images = load_images(train_paths, args.image_size)
    n = len(images)
    start = time.monotonic()
    budget_s = args.max_minutes * 60
    stage1_deadline = start + budget_s * (STAGE1_SHARE if model.segmentation is not None else 1.0)
    this_run: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stopped_by": "epochs"}

    # ---- stage 1: distillation ----------------------------------------------------------
    steps_per_epoch = args.steps_per_epoch or math.ceil(n / args.batch)
    step_times: list[float] = []
    model.train()
    while epoch < args.epochs and time.monotonic() < stage1_deadline:
        order = rng.permutation(n)
        sums = {"loss": 0.0, "global": 0.0, "topk": 0.0, "structure": 0.0}
        t_epoch = time.monotonic()
        steps = 0
        for step in tqdm(range(steps_per_epoch), desc=f"stage 1 epoch {epoch + 1}/{args.epochs}", disable=None):
            t = time.monotonic()
            clean = [images[order[(step * args.batch + j) % n]] for j in range(args.batch)]
            x = to_batch(clean + [augment(im, rng) for im in clean], spec)
            f = model.features(x, seg=False)
            loss, parts = distillation_loss(f.teacher, f.student, cfg["top_k"])
            opt_distill.zero_grad(set_to_none=True)
            loss.backward()
            opt_distill.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] += v
            steps += 1
            step_times.append(time.monotonic() - t)
            if time.monotonic() >= stage1_deadline:
                this_run["stopped_by"] = "max-minutes"
                break
        epoch += 1
        record = {"epoch": epoch, "steps": steps, "seconds": round(time.monotonic() - t_epoch, 1),
                  **{k: v / steps for k, v in sums.items()}}
        history["stage1"].append(record)
        tqdm.write(f"stage 1 epoch {epoch}: loss {record['loss']:.4f} ({steps} steps, {record['seconds']} s)",
                   file=sys.stderr)
        save()
    if epoch < args.epochs:
        this_run["stopped_by"] = "max-minutes"
    stage1_s = time.monotonic() - start
    if step_times:
        seg_step = 0  # the student changed: retrain the head on it (warm start)

    # ---- stage 2: segmentation head on synthetic anomalies ------------------------------
    t2 = time.monotonic()
    seg_steps_this_run = 0
    if model.segmentation is not None and opt_seg is not None:
        model.eval()
        model.bottleneck.requires_grad_(False)
        model.student.requires_grad_(False)
        model.segmentation.train()
        sums2 = {"loss": 0.0, "focal": 0.0, "l1": 0.0}
        chunk = 0
        bar = tqdm(total=args.seg_steps, initial=seg_step, desc="stage 2 segmentation", disable=None)
        while seg_step < args.seg_steps:
            if time.monotonic() >= start + budget_s:
                this_run["stopped_by"] = "max-minutes"
                break
            batch_imgs, masks = [], []
            for i in rng.integers(n, size=args.batch):
                if rng.random() < SEG_ANOMALY_P:
                    img, mask = synthesize(images[i], rng)
                else:
                    img, mask = images[i], np.zeros(images[i].shape[:2], np.float32)
                batch_imgs.append(img)
                masks.append(mask)
            f = model.features(to_batch(batch_imgs, spec))
            assert f.seg_logits is not None
            m = torch.nn.functional.interpolate(torch.from_numpy(np.stack(masks))[:, None],
                                                size=f.seg_logits.shape[-2:], mode="bilinear", align_corners=False)
            loss, parts = segmentation_loss(f.seg_logits, (m >= 0.5).float())
            opt_seg.zero_grad(set_to_none=True)
            loss.backward()
            opt_seg.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums2[k] += v
            seg_step += 1
            seg_steps_this_run += 1
            chunk += 1
            bar.update(1)
            if chunk == SEG_CHECKPOINT_EVERY or seg_step == args.seg_steps:
                history["stage2"].append({"step": seg_step, **{k: v / chunk for k, v in sums2.items()}})
                sums2 = dict.fromkeys(sums2, 0.0)
                chunk = 0
                save()
        bar.close()
        if chunk:
            history["stage2"].append({"step": seg_step, **{k: v / chunk for k, v in sums2.items()}})
    stage2_s = time.monotonic() - t2
    seg_steps_run = seg_step if model.segmentation is not None else 0

    # ---- calibration on held-back normal images -----------------------------------------
    t3 = time.monotonic()
    held = load_images(held_paths, args.image_size)
    crng = np.random.default_rng(args.seed + CALIB_SEED_OFFSET)
    normal = image_scores(model, held, spec, args.batch)
    synthetic = image_scores(model, [synthesize(im, crng)[0] for im in held], spec, args.batch)
    threshold = float(np.quantile(normal, NORMAL_QUANTILE))
    calibration = {
        "model": "float PyTorch checkpoint", "score": "max of the resized, blurred map (BUNDLE.md)",
        "blur_sigma": BLUR_SIGMA, "normal_quantile": NORMAL_QUANTILE, "threshold": threshold,
        "synthetic_auroc": auroc(normal, synthetic),
        "held_out": [p.name for p in held_paths],
        "normal_scores": normal.round(6).tolist(), "synthetic_scores": synthetic.round(6).tolist(),
    }
    (out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    calib_s = time.monotonic() - t3

    this_run.update({
        "stage1_seconds": round(stage1_s, 1), "stage1_steps": len(step_times),
        "seconds_per_step": round(float(np.mean(step_times)), 3) if step_times else None,
        "stage2_seconds": round(stage2_s, 1),
        "stage2_steps": seg_steps_this_run,
        "calibration_seconds": round(calib_s, 1),
    })
    history["runs"].append(this_run)
    save()
    n_params = {name: sum(p.numel() for p in part.parameters())
                for name, part in (("teacher", model.teacher), ("bottleneck", model.bottleneck),
                                   ("student", model.student), ("segmentation", model.segmentation))
                if part is not None}
    summary = {
        "config": cfg,
        "data": {"root": str(Path(args.data).resolve()), "fingerprint": data_fp, "images": len(paths),
                 "train": len(train_paths), "held_out": len(held_paths)},
        "epochs_done": epoch, "seg_steps_done": seg_steps_run, "parameters": n_params,
        "calibration": {k: calibration[k] for k in ("threshold", "normal_quantile", "synthetic_auroc")},
        "losses": {"stage1": history["stage1"], "stage2": history["stage2"]},
        "runs": history["runs"],
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gnl fit: {epoch} epochs, {seg_steps_run} segmentation steps; threshold {threshold:.4f}, "
          f"synthetic-anomaly AUROC {calibration['synthetic_auroc']:.3f} on {len(held)} held-back images; "
          f"wrote {ckpt_path}", file=sys.stderr)

    if args.no_export:
        return
    if importlib.util.find_spec("gnl.export") is None:
        print("gnl fit: gnl/export.py is not installed yet; skipping the bundle "
              f"(export later with: gnl export --checkpoint {ckpt_path} --out {out})", file=sys.stderr)
        return
    from gnl.export import export_bundle

    export_bundle(ckpt_path, out, calib_images=train_paths,
                  threshold_info={"value": threshold, "source": "normal", "normal": threshold,
                                  "normal_quantile": NORMAL_QUANTILE, "f1_optimal": None})
