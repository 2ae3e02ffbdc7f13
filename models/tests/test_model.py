"""GNL network shapes and checkpoint round trip, with the real (pretrained) teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gnl.model import GNL, GNLConfig, build_model, cosine_distance, l2_normalize, load_checkpoint


@pytest.fixture(scope="module")
def gnl64() -> GNL:
    torch.manual_seed(0)
    return build_model(GNLConfig(image_size=64)).eval()


def test_forward_shapes(gnl64: GNL) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = gnl64.features(x)
        amap = gnl64(x)
    chans = gnl64.teacher.channels
    assert [tuple(t.shape) for t in f.teacher] == [(2, chans[0], 16, 16), (2, chans[1], 8, 8), (2, chans[2], 4, 4)]
    assert [t.shape for t in f.student] == [t.shape for t in f.teacher]
    assert f.seg_logits is not None and tuple(f.seg_logits.shape) == (2, 1, 16, 16)
    assert tuple(amap.shape) == (2, 1, 16, 16)
    # 3 levels of 1 - cos in [0, 2] plus a probability in [0, 1].
    assert float(amap.min()) >= 0.0 and float(amap.max()) <= 7.0


def test_rd4ad_has_no_seg_head() -> None:
    m = build_model(GNLConfig(method="rd4ad", image_size=64)).eval()
    assert m.segmentation is None
    with torch.no_grad():
        assert m.features(torch.randn(1, 3, 64, 64)).seg_logits is None
        assert float(m(torch.randn(1, 3, 64, 64)).max()) <= 6.0


def test_teacher_frozen_and_kept_in_eval(gnl64: GNL) -> None:
    gnl64.train()
    try:
        assert not gnl64.teacher.training
        assert not any(p.requires_grad for p in gnl64.teacher.parameters())
        assert all(p.requires_grad for p in gnl64.student.parameters())
    finally:
        gnl64.eval()


def test_cosine_helpers() -> None:
    x = torch.tensor([[[[3.0]], [[4.0]]]])
    assert torch.allclose(l2_normalize(x).flatten(), torch.tensor([0.6, 0.8]))
    assert float(cosine_distance(x, 2 * x)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(x, -x)) == pytest.approx(2.0, abs=1e-6)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        GNLConfig(image_size=100)
    with pytest.raises(ValueError, match="method"):
        GNLConfig(method="padim")
    with pytest.raises(ValueError, match="student_width"):
        GNLConfig(student_width=0)


def test_wider_student_keeps_levels(gnl64: GNL) -> None:
    """--student-width 2: twice the inner width in each student block, the
    teacher's channels at each level, so maps and losses are as before."""
    torch.manual_seed(0)
    wide = build_model(GNLConfig(image_size=64, student_width=2)).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 1.7 < count(wide.student) / count(gnl64.student) < 2.0  # every inner conv x2; shortcuts as before
    assert count(wide.bottleneck) == count(gnl64.bottleneck)
    assert wide.student.up1[0].body[0].out_channels == 2 * gnl64.teacher.channels[0]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fw, f1 = wide.features(x), gnl64.features(x)
        assert [s.shape for s in fw.student] == [s.shape for s in f1.student]
        assert wide(x).shape == gnl64(x).shape
    # Checkpoints written before the option load as width 1.
    assert GNLConfig.from_dict({"image_size": 64}).student_width == 1


def test_checkpoint_round_trip(gnl64: GNL, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {**gnl64.config.as_dict(), "epochs": 1}, "state_dict": gnl64.trainable_state_dict(),
                "epoch": 1}, path)
    assert not any(k.startswith("teacher.") for k in gnl64.trainable_state_dict())
    loaded = load_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), gnl64(x), atol=1e-6)


def test_resnet_v2_teacher_trains_and_mirrors_bottlenecks() -> None:
    """`--backbone resnet50-v2`: GNL builds on it with bottleneck blocks (as
    for WideResNet50), runs forward and backward, and only the student side learns."""
    from gnl.losses import distillation_loss
    from gnl.teacher import RESNET_V2_WEIGHTS

    if not RESNET_V2_WEIGHTS.is_file():
        pytest.skip(f"ResNet50-v2 weights not at {RESNET_V2_WEIGHTS} (../shared/weights/resnet50-v2/)")
    torch.manual_seed(0)
    m = build_model(GNLConfig(backbone="resnet50-v2", image_size=64)).train()
    assert m.teacher.channels == (256, 512, 1024)
    assert m.student.up1[1].body[0].kernel_size == (1, 1)  # a bottleneck block: 1x1 first
    f = m.features(torch.randn(2, 3, 64, 64))
    assert [t.shape[1:] for t in f.student] == [t.shape[1:] for t in f.teacher]
    loss, _ = distillation_loss(f.teacher, f.student)
    (loss + f.seg_logits.mean()).backward()
    assert all(p.grad is not None for p in m.bottleneck.parameters())
    assert all(p.grad is not None for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    with torch.no_grad():
        assert tuple(m.eval()(torch.randn(1, 3, 64, 64)).shape) == (1, 1, 16, 16)
