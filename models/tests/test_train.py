"""`gnl fit` end to end on a tiny synthetic MVTec-layout folder (64x64, 2 steps)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gnl import train
from gnl.device import autocast
from gnl.losses import distillation_loss, segmentation_loss
from gnl.model import GNLConfig, build_model, load_checkpoint


def _dataset(root: Path, n: int = 6) -> Path:
    good = root / "train" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((64, 64, 3), 100, np.uint8) + rng.integers(0, 30, size=(64, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(good / f"{i:03d}.png"), img)
    return root


def _args(data: Path, out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(["--data", str(data), "--out", str(out), "--image-size", "64", "--batch", "2",
                              "--epochs", "1", "--steps-per-epoch", "2", "--seg-steps", "2",
                              "--no-export", *extra])


def _train_config(out: Path) -> dict:
    """The `config` that OUT/train.json records."""
    return json.loads((out / "train.json").read_text())["config"]


def _stage1_weights(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("bottleneck.", "student."))}


def test_fit_then_resume(tmp_path: Path) -> None:
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    assert train.run(_args(data, out)) == 0
    info = json.loads((out / "train.json").read_text())
    assert info["epochs_done"] == 1 and info["seg_steps_done"] == 2
    assert [r["steps"] for r in info["losses"]["stage1"]] == [2]
    assert info["data"] == {**info["data"], "images": 6, "train": 4, "held_out": 2}
    assert info["config"]["backbone"] == "efficientnet-lite0" and info["config"]["seg_head"] is True
    calib = json.loads((out / "calibration.json").read_text())
    assert len(calib["normal_scores"]) == 2 and 0.0 <= calib["synthetic_auroc"] <= 1.0
    # The default drift policy: the threshold also saw 4 views of each held-back image.
    assert calib["drift_policy"] == "product" and len(calib["view_scores"]) == 2 * 4
    assert calib["threshold"] >= calib["threshold_clean"] - 1e-9 or max(calib["view_scores"]) < max(calib["normal_scores"])
    page = cv2.imread(str(out / "fit.png"))
    assert page is not None and page.shape[:2] == (760, 1200)  # the one-page picture
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["config"]["image_size"] == 64
    assert ckpt["calibration"]["threshold"] == calib["threshold"]
    assert tuple(load_checkpoint(out / "checkpoint.pt")(torch.zeros(1, 3, 64, 64)).shape) == (1, 1, 16, 16)

    assert train.run(_args(data, out, "--resume", "--epochs", "2", "--seg-steps", "0")) == 0
    info = json.loads((out / "train.json").read_text())
    assert info["epochs_done"] == 2 and len(info["losses"]["stage1"]) == 2 and len(info["runs"]) == 2

    # Same seed, 2 epochs in one go (no stage 2): stage-1 weights identical to
    # 1 epoch + stage 2 + resume, so stage 2 and resuming leave stage 1 unchanged.
    assert train.run(_args(data, tmp_path / "straight", "--epochs", "2", "--seg-steps", "0")) == 0
    resumed, straight = _stage1_weights(out), _stage1_weights(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_empty_train_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "data" / "train" / "good"
    good.mkdir(parents=True)
    assert train.run(_args(tmp_path / "data", tmp_path / "out")) == 2
    assert str(good) in capsys.readouterr().err


def test_resume_without_checkpoint_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data")
    assert train.run(_args(data, tmp_path / "out", "--resume")) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_bad_image_size_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data")
    assert train.run(_args(data, tmp_path / "out", "--image-size", "100")) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_both_stages_fit_one_batch() -> None:
    """A few steps of each stage on one batch lower its loss (optimisers wired to the right parts)."""
    torch.manual_seed(0)
    model = build_model(GNLConfig(image_size=64)).train()
    x = torch.randn(4, 3, 64, 64)
    opt = torch.optim.Adam([*model.bottleneck.parameters(), *model.student.parameters()],
                           lr=train.LR, betas=train.BETAS)
    losses = []
    for _ in range(6):
        f = model.features(x, seg=False)
        loss, _ = distillation_loss(f.teacher, f.student)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    student = {k: v.clone() for k, v in model.student.state_dict().items()}

    model.eval()
    model.student.requires_grad_(False)
    model.bottleneck.requires_grad_(False)
    assert model.segmentation is not None
    model.segmentation.train()
    seg_opt = torch.optim.SGD(model.segmentation.parameters(), lr=train.SEG_LR_HEAD, momentum=train.SEG_MOMENTUM)
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 4:8, 4:8] = 1.0
    seg_losses = []
    for _ in range(6):
        logits = model.features(x).seg_logits
        assert logits is not None
        loss, _ = segmentation_loss(logits, mask)
        seg_opt.zero_grad()
        loss.backward()
        seg_opt.step()
        seg_losses.append(float(loss.detach()))
    assert seg_losses[-1] < seg_losses[0]
    # Stage 2 leaves the student (weights and BatchNorm statistics) alone.
    assert all(torch.equal(v, student[k]) for k, v in model.student.state_dict().items())


def test_plateau_needs_both_signals_to_stall() -> None:
    def epochs(losses: list[float], scores: list[float]) -> list[dict[str, float]]:
        return [{"loss": a, "normal_score": b} for a, b in zip(losses, scores)]

    flat = [10.0, 9.0, 8.95, 8.94, 8.93]
    assert train.plateaued(epochs(flat, flat), patience=3)  # < 1% better than 9.0 for 3 epochs
    assert not train.plateaued(epochs(flat, [10, 9, 8, 7, 6]), patience=3)  # scores still falling
    assert not train.plateaued(epochs([10, 9, 8, 7, 6], flat), patience=3)  # loss still falling
    assert not train.plateaued(epochs(flat, flat), patience=0)  # 0: never stop early
    assert not train.plateaued(epochs(flat[:3], flat[:3]), patience=3)  # too few epochs to tell


def test_plateau_stops_training(tmp_path: Path) -> None:
    """A model that cannot improve (lr 0, every clean image in every step) stops at the plateau."""
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    saved = train.LR
    train.LR = 0.0
    try:
        assert train.run(_args(data, out, "--method", "rd4ad", "--batch", "4", "--steps-per-epoch", "1",
                               "--epochs", "12", "--patience", "2")) == 0
    finally:
        train.LR = saved
    info = json.loads((out / "train.json").read_text())
    assert info["runs"][-1]["stopped_by"] == "plateau"
    assert info["epochs_done"] < 10
    assert all("normal_score" in e for e in info["losses"]["stage1"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cached_teacher_maps_match_a_fresh_pass(tmp_path: Path, precision: str) -> None:
    """The cache holds what the step's own teacher pass gives, in the run's
    precision (bf16 is forced here, so both cases run on every CPU): the
    cached clean views and the fresh augmented ones are the same kind of
    target. Only the cache's fp16 storage may round them (within the tolerance)."""
    data = _dataset(tmp_path / "data")
    args = _args(data, tmp_path / "out", "--precision", precision)
    t = train.Trainer(args, sorted((data / "train" / "good").iterdir()), "fp", None)
    t._fill_teacher_cache()
    assert t.teacher_cache is not None
    with torch.no_grad(), autocast(t.device, t.amp):
        fresh = t.model.teacher(train.to_batch(t.images, t.spec))
    for cached, f in zip(t.teacher_cache, fresh):
        assert cached.dtype == torch.float16 and cached.shape == f.shape
        torch.testing.assert_close(cached.float(), f.float(), rtol=2e-3, atol=2e-3)


def test_seg_lr_factor() -> None:
    assert [train.seg_lr_factor("constant", s, 4) for s in range(5)] == [1.0] * 5
    cosine = [train.seg_lr_factor("cosine", s, 4) for s in range(5)]
    assert cosine[0] == 1.0 and cosine[2] == pytest.approx(0.5) and cosine[4] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(cosine, cosine[1:]))
    with pytest.raises(ValueError, match="constant"):
        train.seg_lr_factor("step", 1, 4)


def test_cosine_schedule_is_recorded_and_resumed(tmp_path: Path) -> None:
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"

    def last_lrs(run: Path = out) -> list[float]:
        return [g["lr"] for g in torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["seg"]["param_groups"]]

    bases = [train.SEG_LR_RES, train.SEG_LR_HEAD]
    assert train.run(_args(data, out, "--seg-steps", "4", "--seg-lr-schedule", "cosine")) == 0
    assert _train_config(out)["seg_lr_schedule"] == "cosine"
    assert last_lrs() == pytest.approx([b * train.seg_lr_factor("cosine", 3, 4) for b in bases])
    # Resumed without the option: the checkpoint's schedule, over the new --seg-steps.
    assert train.run(_args(data, out, "--resume", "--seg-steps", "6")) == 0
    assert _train_config(out)["seg_lr_schedule"] == "cosine"
    assert last_lrs() == pytest.approx([b * train.seg_lr_factor("cosine", 5, 6) for b in bases])
    # The default keeps DeSTSeg's constant rates.
    assert train.run(_args(data, tmp_path / "constant")) == 0
    assert _train_config(tmp_path / "constant")["seg_lr_schedule"] == "constant"
    assert last_lrs(tmp_path / "constant") == bases


@pytest.mark.parametrize("option, key, default", [("--stroke-share", "stroke_share", train.STROKE_SHARE),
                                                   ("--seg-augment", "seg_augment", train.SEG_AUGMENT)])
def test_stage2_share_is_recorded_resumed_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      option: str, key: str, default: float) -> None:
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    assert train.run(_args(data, out, option, "0.5")) == 0
    assert _train_config(out)[key] == 0.5
    assert train.run(_args(data, out, "--resume", "--seg-steps", "3")) == 0
    assert _train_config(out)[key] == 0.5  # the checkpoint's, as the schedule
    assert train.run(_args(data, tmp_path / "default")) == 0
    assert _train_config(tmp_path / "default")[key] == default
    with pytest.raises(SystemExit):
        _args(data, out, option, "1.5")
    assert f"{option}: must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_seg_augment_augments_the_heads_images(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    paths = sorted((data / "train" / "good").iterdir())

    def batch(*extra: str) -> tuple[np.ndarray, np.ndarray, set[bytes]]:
        """One stage-2 batch from a fixed seed, and the training images as the head would see them unchanged."""
        t = train.Trainer(_args(data, tmp_path / "out", "--batch", "8", *extra), paths, "fp", None)
        t.seg_rng = np.random.default_rng(5)
        x, mask = t._seg_batch()
        return x.numpy(), mask.numpy(), {im.tobytes() for im in train.to_batch(t.images, t.spec).numpy()}

    plain, plain_mask, unchanged = batch("--seg-augment", "0")
    assert any(im.tobytes() in unchanged for im in plain)  # the half without an anomaly
    # Share 1: every image is an augmented view, with or without an anomaly;
    # the masks still mark only the synthetic anomalies.
    augmented, mask, _ = batch("--seg-augment", "1")
    assert not any(im.tobytes() in unchanged for im in augmented)
    assert set(np.unique(mask)) <= {0.0, 1.0} and mask.shape == plain_mask.shape


def test_fit_builds_the_memory_from_training_images_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default memory takes every candidate on a tiny data set (4 images x
    2 views x 4x4 locations at stride 16 < train.MEMORY); its rows are the
    teacher's descriptors of training images, projected, never of the
    held-back ones."""
    from gnl.memory import project

    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    assert train.run(_args(data, out)) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    bank, weight = ckpt["state_dict"]["memory.bank"], float(ckpt["state_dict"]["memory.weight"])
    assert (ckpt["config"]["memory_dims"], ckpt["config"]["memory_stride"]) == (train.MEMORY_DIMS, train.MEMORY_STRIDE)
    assert ckpt["config"]["memory_size"] == train.memory_candidates(4, 64, 16) == 128 == len(bank)
    assert weight > 0 and json.loads((out / "train.json").read_text())["runs"][-1]["memory_weight"] == weight
    model = load_checkpoint(out / "checkpoint.pt")
    paths = sorted((data / "train" / "good").iterdir())
    held = {p.name for p in paths if p.name in set(ckpt["held_out"])}

    def nearest_in_bank(names: set[str]) -> torch.Tensor:
        """Distance of each clean descriptor of these images to the nearest bank row."""
        imgs = [cv2.imread(str(p)) for p in paths if p.name in names]
        with torch.no_grad():
            t = model.teacher(train.to_batch(imgs, train.InputSpec(64, 64, mean=model.teacher.mean,
                                                                   std=model.teacher.std)))
        d = model.memory.describe(t[1], t[2]).flatten(2).transpose(1, 2).flatten(0, 1)
        d = project(d, model.memory.center, model.memory.projection)
        return torch.cdist(d.double(), bank.double()).min(1).values

    assert len(held) == 2
    assert float(nearest_in_bank({p.name for p in paths} - held).max()) < 1e-3  # every clean training descriptor
    assert float(nearest_in_bank(held).min()) > 1e-2  # none of the held-back images'

    # No memory: none in the checkpoint. Too big a memory: a clear error.
    assert train.run(_args(data, tmp_path / "none", "--memory", "0")) == 0
    assert not any(k.startswith("memory.") for k in
                   torch.load(tmp_path / "none" / "checkpoint.pt", weights_only=True)["state_dict"])
    capsys.readouterr()
    assert train.run(_args(data, tmp_path / "big", "--memory", "129")) == 2
    err = capsys.readouterr().err
    assert "--memory 129" in err and "use --memory 128 or less" in err

    # Resuming a checkpoint without a memory, asking for one, adds it and leaves the rest.
    before = torch.load(tmp_path / "none" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert train.run(_args(data, tmp_path / "none", "--resume", "--memory", "100")) == 0
    after = torch.load(tmp_path / "none" / "checkpoint.pt", weights_only=True)
    assert after["config"]["memory_size"] == 100 and float(after["state_dict"]["memory.weight"]) > 0
    assert all(torch.equal(before[k], after["state_dict"][k]) for k in before)

    # Another projection is another memory: resuming with --memory-dims builds it afresh, projected.
    assert train.run(_args(data, tmp_path / "none", "--resume", "--memory-dims", "8")) == 0
    proj = torch.load(tmp_path / "none" / "checkpoint.pt", weights_only=True)
    state = proj["state_dict"]
    assert (proj["config"]["memory_size"], proj["config"]["memory_dims"]) == (100, 8)
    assert proj["config"]["memory_stride"] == after["config"]["memory_stride"] == train.MEMORY_STRIDE
    assert state["memory.bank"].shape == (100, 8) and state["memory.projection"].shape == (8, 152)
    assert float(state["memory.weight"]) > 0
    assert not torch.equal(state["memory.weight"], after["state_dict"]["memory.weight"])
    assert all(torch.equal(before[k], state[k]) for k in before)
