"""teacher.py: strict weight loading, TF padding, frozen eval behaviour, teacher-check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gnl.teacher import (LITE_MEAN, EfficientNetLite, SameConv2d, TeacherWeightsError,
                         add_arguments, build_teacher, run)


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
