"""teacher.py: strict weight loading, TF padding, frozen eval behaviour, teacher-check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gnl.teacher import (IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, RESNET_V2_UNUSED, RESNET_V2_WEIGHTS,
                         EfficientNetLite, PreActBottleneck, ResNetV2Body, SameConv2d, TeacherWeightsError,
                         _resnet_v2_key, add_arguments, build_teacher, read_resnet_v2, run)


def test_lite0_loads_packaged_weights_and_gives_three_levels() -> None:
    t = build_teacher()  # strict: raises if any key of the file does not load
    assert t.name == "efficientnet-lite0" and t.channels == (24, 40, 112)
    assert t.strides == (4, 8, 16) and t.mean == LITE_MEAN
    feats = t(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4)]
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    assert not any(p.requires_grad for p in t.parameters())


def test_weights_mismatch_is_an_error(tmp_path: Path) -> None:
    state = EfficientNetLite().state_dict()
    del state["_blocks.3._bn1.running_var"]
    state["_extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(TeacherWeightsError, match=r"w.pth: .*_blocks.3._bn1.running_var.*_extra.weight"):
        build_teacher(weights=path)


def test_same_padding_is_tensorflows() -> None:
    """Stride 2 on an even size pads only bottom/right (TF SAME), not symmetrically."""
    conv = SameConv2d(1, 1, 3, 2)
    x = torch.randn(1, 1, 8, 8)
    want = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), want)
    conv5 = SameConv2d(1, 1, 5, 2)
    assert torch.allclose(conv5(x), F.conv2d(F.pad(x, [1, 2, 1, 2]), conv5.weight, stride=2))


def test_resnet_weights_missing_names_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TeacherWeightsError, match=r"checkpoints/resnet18-f37072fd.pth"):
        build_teacher("resnet18")
    rnd = build_teacher("resnet18", pretrained=False)
    assert [f.shape[1] for f in rnd(torch.zeros(1, 3, 64, 64))] == [64, 128, 256]


def test_resnet_loads_explicit_weights(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    assert build_teacher("resnet18", weights=path).channels == (64, 128, 256)


def test_teacher_check_runs(tmp_path: Path) -> None:
    from test_data import make_mvtec

    root = make_mvtec(tmp_path / "d", n_train=3, n_good=3, n_defect=3, size=(64, 64))
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "r.json"
    args = p.parse_args(["--data", str(root), "--image-size", "64", "--bank-images", "3",
                         "--json", str(out)])
    run(args)
    res = json.loads(out.read_text())
    assert res["all_keys_loaded"] and 0 <= res["pretrained_image_auroc"] <= 1
    assert 0 <= res["random_image_auroc"] <= 1 and res["test_images"] == 6


def test_lite_variants_scale_as_the_tf_builder() -> None:
    from gnl.teacher import LITE0_STAGES, lite_stages

    assert lite_stages("efficientnet-lite0") == LITE0_STAGES
    # Lite2: width 1.1, depth 1.2; first and last stage repeats fixed (fix_head_stem).
    assert [s[4] for s in lite_stages("efficientnet-lite2")] == [16, 24, 48, 88, 120, 208, 352]
    assert [s[0] for s in lite_stages("efficientnet-lite2")] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[0] for s in lite_stages("efficientnet-lite1")] == [1, 3, 3, 4, 4, 5, 1]


def test_nearest_distance_matches_brute_force() -> None:
    from gnl.teacher import nearest_distance

    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g)
    want = torch.cdist(q, bank).min(1).values
    torch.testing.assert_close(nearest_distance(q, bank), want, rtol=1e-4, atol=1e-4)


def test_letterbox_keeps_aspect_and_marks_valid_pixels() -> None:
    import numpy as np

    from gnl.teacher import letterbox

    img = np.full((100, 300, 3), 200, np.uint8)  # 3:1
    out, valid = letterbox(img, 96)
    assert out.shape == (96, 96, 3) and valid.shape == (96, 96)
    rows = np.flatnonzero(valid.any(1))
    assert len(rows) == 32 and valid.all(1)[rows].all()  # 96 wide x 32 tall, centred
    assert (out[~valid] == 0).all() and (out[valid] == 200).all()


# ------------------------------------------------------------------ ResNet50-v2

MTD = Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"
needs_resnet_v2 = pytest.mark.skipif(
    not RESNET_V2_WEIGHTS.is_file(),
    reason=f"ResNet50-v2 weights not at {RESNET_V2_WEIGHTS} (../shared/weights/resnet50-v2/ beside the checkout)")


@pytest.fixture(scope="module")
def resnet_v2():
    return build_teacher("resnet50-v2")


@pytest.fixture(scope="module")
def mtd_batch(resnet_v2) -> torch.Tensor:
    """16 MTD training images, normalised as the teacher wants, 160x160."""
    import numpy as np

    from gnl.data import load_image, train_images
    from gnl.preprocess import InputSpec, to_tensor

    if not (MTD / "train" / "good").is_dir():
        pytest.skip(f"MTD not found at {MTD}")
    paths = train_images(MTD)
    paths = paths[::len(paths) // 16][:16]
    spec = InputSpec(160, 160, mean=resnet_v2.mean, std=resnet_v2.std)
    return torch.from_numpy(np.stack([to_tensor(load_image(p), spec) for p in paths]))


@needs_resnet_v2
def test_resnet_v2_uses_every_tensor_of_the_file_once(resnet_v2) -> None:
    import numpy as np

    state, data_bn = read_resnet_v2(RESNET_V2_WEIGHTS)
    weights = {k for k in state if not k.endswith(".num_batches_tracked")}
    with np.load(RESNET_V2_WEIGHTS) as z:
        names = list(z.files)
        # 207 tensors in the module, 4 folded into mean/std, batchnorm2's 4 after stage 4.
        assert len(names) == 215 and len(weights) == 207 and len(data_bn) == 4 and len(RESNET_V2_UNUSED) == 4
        assert weights == {k for k in resnet_v2.body.state_dict() if not k.endswith(".num_batches_tracked")}
        own = resnet_v2.body.state_dict()
        for k in names:
            if _resnet_v2_key(k) is not None:
                assert torch.equal(own[_resnet_v2_key(k)], torch.from_numpy(z[k])), k
    # ... and every one of them takes part in the forward pass.
    body = ResNetV2Body()
    body.load_state_dict(resnet_v2.body.state_dict())
    body.eval()
    sum(f.mean() for f in body(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())
    assert resnet_v2.channels == (256, 512, 1024)
    assert [tuple(f.shape) for f in resnet_v2(torch.zeros(1, 3, 64, 64))] == [
        (1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4)]


@needs_resnet_v2
def test_resnet_v2_data_batch_norm_is_folded_into_mean_std(resnet_v2, mtd_batch) -> None:
    """teacher.mean/std = ImageNet's mean/std, then Gluon's data batchnorm0."""
    _, bn = read_resnet_v2(RESNET_V2_WEIGHTS)
    mean, std = (torch.tensor(v)[:, None, None] for v in (resnet_v2.mean, resnet_v2.std))
    pixels = mtd_batch * std + mean  # back to pixel/255
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    want = F.batch_norm(imagenet, *(torch.from_numpy(bn[k]) for k in ("running_mean", "running_var", "gamma", "beta")),
                        training=False, eps=1e-5)
    torch.testing.assert_close(mtd_batch, want, rtol=1e-5, atol=1e-5)
    assert resnet_v2.mean != IMAGENET_MEAN and resnet_v2.std != IMAGENET_STD


def _bn_input_correlations(body: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """Per batch norm: correlation over channels of its input's batch mean with its running mean."""
    import numpy as np

    got: dict[torch.nn.Module, torch.Tensor] = {}

    def record(m: torch.nn.Module, inputs: tuple[torch.Tensor], _: torch.Tensor) -> None:
        got.setdefault(m, inputs[0].mean((0, 2, 3)))  # once: a level's read reuses a unit's bn1

    hooks = [m.register_forward_hook(record) for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        body(x)
    for h in hooks:
        h.remove()
    return [float(np.corrcoef(mu.numpy(), m.running_mean.numpy())[0, 1]) for m, mu in got.items()]


class _ShortcutFromInput(PreActBottleneck):
    """Mis-wired: the projection reads x instead of ReLU(BN1(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        y = F.relu(self.bn2(self.conv1(F.relu(self.bn1(x)))))
        return self.conv3(F.relu(self.bn3(self.conv2(y)))) + shortcut


@needs_resnet_v2
def test_resnet_v2_batch_norms_see_the_statistics_they_were_trained_on(resnet_v2, mtd_batch) -> None:
    """The README's check on real images: each BN's input mean over a batch
    follows its stored running mean (the stem's BN aside: grey tiles are far
    from ImageNet's colours); the same weights wired wrongly lose that."""
    import numpy as np

    corr = _bn_input_correlations(resnet_v2.body, mtd_batch)
    assert len(corr) == 41 and np.median(corr[1:]) > 0.75, np.round(corr, 2)
    wrong = ResNetV2Body()
    for stage in wrong.stages:
        stage[0].__class__ = _ShortcutFromInput
    wrong.load_state_dict(resnet_v2.body.state_dict())
    wrong.eval()
    assert np.median(_bn_input_correlations(wrong, mtd_batch)[1:]) < 0.5


def test_resnet_v2_missing_or_wrong_file_names_it_and_the_fix(tmp_path: Path) -> None:
    import numpy as np

    with pytest.raises(TeacherWeightsError, match=r"nope.npz: ResNet50-v2 weights file not found.*--teacher-weights"):
        build_teacher("resnet50-v2", weights=tmp_path / "nope.npz")
    (tmp_path / "w.pth").write_bytes(b"not an npz")
    with pytest.raises(TeacherWeightsError, match=r"w.pth: not an npz"):
        build_teacher("resnet50-v2", weights=tmp_path / "w.pth")
    if not RESNET_V2_WEIGHTS.is_file():
        pytest.skip(f"ResNet50-v2 weights not at {RESNET_V2_WEIGHTS}")
    with np.load(RESNET_V2_WEIGHTS) as z:
        arrays = {k: z[k] for k in z.files}
    del arrays["resnetv24_stage2_batchnorm7_running_var"]
    arrays["resnetv24_stage3_conv19_weight"] = np.zeros((1,), np.float32)  # a unit too many
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TeacherWeightsError,
                       match=r"bad.npz: .*stages.1.2.bn2.running_var.*resnetv24_stage3_conv19_weight"):
        build_teacher("resnet50-v2", weights=tmp_path / "bad.npz")


def test_resnet_v2_random_weights_need_no_file() -> None:
    t = build_teacher("resnet50-v2", weights="/nonexistent.npz", pretrained=False)
    assert t.mean == IMAGENET_MEAN and [f.shape[1] for f in t(torch.zeros(1, 3, 32, 32))] == [256, 512, 1024]
