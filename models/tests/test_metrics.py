"""metrics.py against hand-computed cases and known identities."""

from __future__ import annotations

import numpy as np
import pytest

from gnl.metrics import (aupro, f1max_threshold, image_auroc, image_auroc_per_class, image_f1max, pixel_auroc,
                         pro_curve)


def test_auroc_identities() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert image_auroc(y, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert image_auroc(y, [0.9, 0.8, 0.7, 0.1, 0.2]) == 0.0
    assert image_auroc(y, [0.5] * 5) == 0.5  # all tied
    rng = np.random.default_rng(0)
    yr = rng.integers(0, 2, 20000)
    assert abs(image_auroc(yr, rng.random(20000)) - 0.5) < 0.02


def test_auroc_hand_computed_with_ties() -> None:
    # pairs (pos, neg): pos {0.4, 0.8}, neg {0.4, 0.1, 0.5}
    # 0.4 vs 0.4 tie -> 1/2, 0.4 > 0.1 -> 1, 0.4 < 0.5 -> 0; 0.8 beats all 3 -> 3; total 4.5 / 6
    assert image_auroc([1, 1, 0, 0, 0], [0.4, 0.8, 0.4, 0.1, 0.5]) == pytest.approx(0.75)


def test_auroc_rejects_single_class() -> None:
    with pytest.raises(ValueError, match="both"):
        image_auroc([1, 1], [0.1, 0.2])


def test_f1max_hand_computed() -> None:
    y = [1, 0, 1, 0, 1]
    s = [0.9, 0.8, 0.7, 0.3, 0.2]
    # thresholds: 0.9 -> tp1 fp0 fn2: 2/5; 0.8 -> 1,1,2: 2/5; 0.7 -> 2,1,1: 4/6;
    # 0.3 -> 2,2,1: 4/7; 0.2 -> 3,2,0: 6/8
    assert image_f1max(y, s) == pytest.approx(0.75)
    assert f1max_threshold(y, s) == pytest.approx(0.2)
    assert image_f1max([0, 1, 1], [0.1, 0.5, 0.9]) == 1.0
    # Ties cannot be split: both at 0.5 go together -> tp1 fp1 fn0 = 2/3
    assert image_f1max([0, 1], [0.5, 0.5]) == pytest.approx(2 / 3)


def test_pixel_auroc_flattens_images() -> None:
    masks = [np.array([[0, 1], [0, 0]]), np.array([[1, 1], [0, 0]])]
    maps = [np.array([[0.1, 0.9], [0.2, 0.3]]), np.array([[0.8, 0.7], [0.0, 0.1]])]
    assert pixel_auroc(masks, maps) == 1.0
    assert pixel_auroc(masks, [-m for m in maps]) == 0.0


def test_aupro_perfect_and_reversed() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6] = 1
    mask[12:18, 10:19] = 1
    assert aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)
    assert aupro([mask], [1.0 - mask]) == pytest.approx(0.0)


def test_aupro_weights_regions_equally() -> None:
    """A small region fully found and a big one missed give PRO 1/2, whatever their areas."""
    mask = np.zeros((30, 30), np.uint8)
    mask[1:3, 1:3] = 1          # region A, 4 px
    mask[10:30, 10:30] = 1      # region B, 400 px
    amap = np.zeros((30, 30))
    amap[1:3, 1:3] = 1.0        # only A scores high
    fpr, pro = pro_curve([mask], [amap])
    # threshold 1.0: FPR 0, PRO 1/2 (A found, B not); then everything: FPR 1, PRO 1
    assert fpr.tolist() == [0.0, 0.0, 1.0] and pro.tolist() == pytest.approx([0.0, 0.5, 1.0])
    # area to FPR 0.3 of the line from (0, .5) to (1, 1): 0.3*0.5 + 0.3*0.15/2 ... / 0.3
    assert aupro([mask], [amap]) == pytest.approx(0.5 + 0.5 * 0.3 / 2)


def test_aupro_random_is_low() -> None:
    rng = np.random.default_rng(1)
    masks = [(rng.random((128, 128)) > 0.97).astype(np.uint8) for _ in range(4)]
    maps = [rng.random((128, 128)) for _ in range(4)]
    # Random scores: PRO ~ FPR, so the normalised area to 0.3 is ~0.15.
    assert abs(aupro(masks, maps) - 0.15) < 0.015


def test_aupro_connected_components_are_8_connected() -> None:
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one region
    amap = np.zeros((6, 6))
    amap[1, 1] = 1.0
    _, pro = pro_curve([mask], [amap])
    assert pro[1] == pytest.approx(0.5)  # half of the single region, not 1 of 2 regions


def test_image_auroc_per_class() -> None:
    """Each defect class against all good images; the good class itself is not listed."""
    classes = ["good", "good", "crack", "crack", "hole"]
    scores = [0.1, 0.3, 0.2, 0.9, 0.05]
    assert image_auroc_per_class(classes, scores) == {"crack": 0.75, "hole": 0.0}
