"""DRAEM-style synthetic anomalies: binary, non-empty, local, seeded."""

from __future__ import annotations

import numpy as np

from gnl.synth import perlin, perlin_mask, synthesize


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
