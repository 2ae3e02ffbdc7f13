"""Augmentation of normal images: seeded, uint8 in and out, mild."""

from __future__ import annotations

import numpy as np

from gnl.augment import FILL, augment, rotation


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 200, size=(64, 64, 3), dtype=np.uint8)


def test_same_seed_same_output() -> None:
    img = _image()
    a = [augment(img, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(augment(img, np.random.default_rng(8)), a[0])


def test_shape_dtype_and_range() -> None:
    img = _image()
    rng = np.random.default_rng(1)
    for _ in range(30):
        out = augment(img, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
    # Input untouched.
    assert np.array_equal(img, _image())


def test_changes_are_mild_on_average() -> None:
    img = _image()
    rng = np.random.default_rng(2)
    diffs = [np.abs(augment(img, rng).astype(int) - img).mean() for _ in range(40)]
    # Photometric changes stay small; rotations of a noise image move ~ its spread.
    assert np.median(diffs) < 45


def test_rotation_fills_corners_black_as_the_test_rotation() -> None:
    img = np.full((64, 64, 3), 200, np.float32)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(10):
        out = rotation(img, rng)
        hits += int(np.isclose(out, FILL).all(axis=-1).any())
    assert FILL == 0  # torchvision's RandomRotation (VAND 2.0) fills with 0
    assert hits >= 5  # any non-multiple-of-90 angle exposes black corners
    grey = rotation(img, np.random.default_rng(0), fill=114)
    assert np.isclose(grey, 114).all(axis=-1).any()
