"""Stage-1 and stage-2 losses on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from gnl.losses import (distillation_loss, focal_loss, global_cosine_loss, segmentation_loss,
                        structure_loss, topk_cosine_loss)


def _orthogonal() -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher (1, 0) and student (0, 1) at every pixel of a 2x4x4 map."""
    t = torch.zeros(2, 2, 4, 4)
    s = torch.zeros(2, 2, 4, 4)
    t[:, 0] = 1.0
    s[:, 1] = 1.0
    return t, s


def test_identical_features_give_zero() -> None:
    t = torch.randn(2, 8, 5, 5)
    total, parts = distillation_loss([t, t[:, :4]], [t.clone(), t[:, :4].clone()])
    assert float(total) == pytest.approx(0.0, abs=1e-5)
    assert all(v == pytest.approx(0.0, abs=1e-5) for v in parts.values())


def test_orthogonal_features_give_one() -> None:
    t, s = _orthogonal()
    assert float(global_cosine_loss(t, s)) == pytest.approx(1.0)
    assert float(topk_cosine_loss(t, s)) == pytest.approx(1.0)


def test_topk_picks_the_worst_pixels() -> None:
    t = torch.ones(1, 2, 10, 10)
    s = t.clone()
    s[0, :, 0, :3] = -1.0  # 3 opposite pixels: 1 - cos = 2
    # top-10 of 100 pixels: three 2s and seven 0s.
    assert float(topk_cosine_loss(t, s, k=10)) == pytest.approx(0.6, abs=1e-5)
    # k larger than the map uses all pixels.
    assert float(topk_cosine_loss(t, s, k=1000)) == pytest.approx(0.06, abs=1e-5)


def test_structure_loss_known_kl() -> None:
    # Teacher: all mass on one of 2 pixels (logits +-inf-ish); student uniform -> KL = log 2.
    t = torch.tensor([[[[50.0, -50.0]]]])
    s = torch.zeros(1, 1, 1, 2)
    assert float(structure_loss(t, s)) == pytest.approx(math.log(2), abs=1e-5)
    # Scale per channel does not matter for cosine, but does for the spatial softmax.
    assert float(structure_loss(s, s)) == pytest.approx(0.0, abs=1e-7)


def test_focal_and_l1_values() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # p = 0.5 everywhere: BCE = log 2, (1 - p_t)^4 = 1/16; L1 = 0.5.
    assert float(focal_loss(logits, mask)) == pytest.approx(math.log(2) / 16, abs=1e-6)
    total, parts = segmentation_loss(logits, mask)
    assert parts["l1"] == pytest.approx(0.5)
    assert float(total) == pytest.approx(math.log(2) / 16 + 0.5, abs=1e-6)


def test_confident_correct_segmentation_is_near_zero() -> None:
    mask = torch.tensor([[[[1.0, 0.0]]]])
    total, _ = segmentation_loss((mask * 2 - 1) * 20, mask)
    assert float(total) < 1e-6


def test_plain_rd4ad_loss_is_the_global_term_alone() -> None:
    torch.manual_seed(0)
    t = [torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)]
    s = [torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)]
    full, parts = distillation_loss(t, s, k=3)
    plain, plain_parts = distillation_loss(t, s, k=3, plain=True)
    assert plain_parts == parts
    assert float(plain) == pytest.approx(parts["global"], rel=1e-6)
    assert float(full) == pytest.approx(parts["global"] + parts["topk"] + parts["structure"], rel=1e-6)
