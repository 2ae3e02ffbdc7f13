"""Drift policies (gnl/policy.py): seeded, shape-keeping, what each varies."""

from __future__ import annotations

import numpy as np
import pytest

from gnl import augment, policy


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, size=(64, 64, 3), dtype=np.uint8)
    img[:, :8] = 255  # a bright left edge: a flip moves it
    return img


@pytest.mark.parametrize("name", policy.POLICIES)
def test_views_are_seeded_and_keep_shape(name: str) -> None:
    view, img = policy.view_fn(name), _image()
    a = [view(img, np.random.default_rng(3)) for _ in range(2)]
    assert np.array_equal(a[0], a[1]) and a[0].shape == img.shape and a[0].dtype == np.uint8
    assert np.array_equal(img, _image())  # input untouched
    d = policy.describe(name)
    assert d["name"] == name and "families" in d
    assert d["threshold_views"] == (0 if name == policy.LEGACY else policy.THRESHOLD_VIEWS)


def test_legacy_is_the_old_augmentation() -> None:
    img = _image()
    assert np.array_equal(policy.view_fn(policy.LEGACY)(img, np.random.default_rng(5)),
                          augment.augment(img, np.random.default_rng(5)))


def _flipped(view, n: int = 200) -> int:
    """Views whose bright edge moved to the right: flipped left-right."""
    img, rng = _image(), np.random.default_rng(1)
    return sum(int(v[:, -4:].mean() > v[:, :4].mean() + 40) for v in (view(img, rng) for _ in range(n)))


def test_product_never_flips_and_mirrored_does() -> None:
    assert _flipped(policy.view_fn(policy.PRODUCT)) == 0
    assert 60 < _flipped(policy.view_fn(policy.PRODUCT_MIRRORED)) < 140  # p = 1/2
    assert 60 < _flipped(policy.view_fn(policy.VAND2)) < 140


def test_product_changes_stay_camera_sized() -> None:
    img, rng, view = _image(), np.random.default_rng(2), policy.view_fn(policy.PRODUCT)
    diffs = [np.abs(view(img, rng).astype(int) - img).mean() for _ in range(100)]
    assert np.median(diffs) < 45 and min(diffs) < 1.0  # some views are (nearly) clean: each family p = 1/2


def test_unknown_policy_is_clear() -> None:
    with pytest.raises(ValueError, match="choose one of product"):
        policy.view_fn("sunny")
