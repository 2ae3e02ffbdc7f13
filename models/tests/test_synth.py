"""DRAEM-style synthetic anomalies and thin strokes: binary, non-empty, local, seeded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gnl.synth import STROKE_LENGTH, STROKE_WIDTH, perlin, perlin_mask, shade, stroke_mask, synthesize


def _image() -> np.ndarray:
    return np.full((64, 64, 3), 120, np.uint8)


def test_mask_binary_with_sensible_coverage() -> None:
    rng = np.random.default_rng(0)
    coverage = []
    for _ in range(40):
        out, mask = synthesize(_image(), rng)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        coverage.append(mask.mean())
        # Outside the mask the image is unchanged.
        assert np.array_equal(out[mask == 0], _image()[mask == 0])
    assert min(coverage) > 0
    assert 0.005 < float(np.median(coverage)) < 0.3


def test_seeded() -> None:
    a = synthesize(_image(), np.random.default_rng(3))
    b = synthesize(_image(), np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_perlin_any_shape_and_range() -> None:
    rng = np.random.default_rng(1)
    n = perlin((50, 70), (4, 8), rng)
    assert n.shape == (50, 70)
    assert np.abs(n).max() <= 1.0 + 1e-9
    # Zero at the lattice points (gradient noise), e.g. the origin.
    assert abs(n[0, 0]) < 1e-12


def test_mask_is_never_empty() -> None:
    rng = np.random.default_rng(5)
    assert all(perlin_mask((16, 16), rng).any() for _ in range(50))


def _deep_share(mask: np.ndarray) -> float:
    """Share of the mask's pixels deeper than a widest stroke's half width
    (+2 px for the raster) from the background: 0 for a thin mask."""
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return float((depth > STROKE_WIDTH[1] * min(mask.shape) / 2 + 2).sum() / mask.sum())


def test_strokes_are_thin_and_long() -> None:
    """Stroke masks are non-empty, binary and thin (only where strokes cross or
    curl is a pixel deeper than a stroke's half width), and they span at least
    half of STROKE_LENGTH's low end of the long side (median)."""
    rng = np.random.default_rng(7)
    h, w = 120, 200
    spans, deep, coverage = [], [], []
    for _ in range(100):
        mask = stroke_mask((h, w), rng)
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0} and mask.any()
        ys, xs = np.nonzero(mask)
        spans.append(max(np.ptp(xs), np.ptp(ys)))
        deep.append(_deep_share(mask))
        coverage.append(mask.mean())
    assert np.median(spans) >= 0.5 * STROKE_LENGTH[0] * max(h, w)
    assert np.median(deep) == 0 and np.mean(deep) < 0.01
    assert float(np.median(coverage)) < 0.05


def test_stroke_share_picks_strokes() -> None:
    """With share 1 every mask is a thin stroke; with 0 the draws are exactly
    the Perlin ones (no extra random number), so old seeds give old anomalies."""
    img = np.full((64, 64, 3), 120, np.uint8)
    for seed in range(5):
        a = synthesize(img, np.random.default_rng(seed), 0.0)
        b = synthesize(img, np.random.default_rng(seed))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    rng, deep = np.random.default_rng(2), []
    for _ in range(20):
        out, mask = synthesize(img, rng, 1.0)
        assert mask.any() and np.array_equal(out[mask == 0], img[mask == 0])
        deep.append(_deep_share(mask))
    assert np.median(deep) == 0


def test_shade_darkens_or_lightens_uniformly() -> None:
    img = np.full((8, 8, 3), 100, np.uint8)
    rng = np.random.default_rng(4)
    gains = [float(shade(img, rng)[0, 0, 0]) / 100 for _ in range(200)]
    assert all(0.2 <= g <= 0.7 or 1.3 <= g <= 2.0 for g in gains)
    assert 0.3 < np.mean([g < 1 for g in gains]) < 0.7  # both kinds, about evenly
    assert np.ptp(shade(img, np.random.default_rng(1))) == 0  # one gain for the whole image


@pytest.mark.parametrize("shape", [(16, 16), (9, 300), (300, 9)])
def test_stroke_mask_never_empty_on_odd_shapes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(6)
    assert all(stroke_mask(shape, rng).any() for _ in range(30))
