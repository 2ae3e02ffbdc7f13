"""perturb.py: determinism per seed, image and mask moved together, conditions."""

from __future__ import annotations

import numpy as np
import pytest

from gnl.perturb import CONDITIONS, apply, conditions


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """An L-shaped bright object on black; its mask is exactly the object."""
    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 15:25] = 1
    mask[40:50, 15:60] = 1
    img = np.repeat((mask * 200)[..., None], 3, 2).astype(np.uint8)
    img[..., 0] //= 2  # some colour, so hue/saturation act
    return img, mask


@pytest.mark.parametrize("condition", CONDITIONS)
def test_same_seed_same_result(condition: str) -> None:
    img, mask = _scene()
    runs = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        runs.append([apply(condition, img, mask, rng) for _ in range(3)])
    for (a, am), (b, bm) in zip(*runs):
        assert a.dtype == np.uint8 and a.shape == img.shape and am.shape == mask.shape
        assert np.array_equal(a, b) and np.array_equal(am, bm)


def test_vand2_draws_differ_between_images_and_seeds() -> None:
    img, mask = _scene()
    rng = np.random.default_rng(0)
    first, second = apply("vand2", img, mask, rng), apply("vand2", img, mask, rng)
    other = apply("vand2", img, mask, np.random.default_rng(1))
    assert not np.array_equal(first[0], second[0])
    assert not np.array_equal(first[0], other[0])


def test_vand2_moves_mask_with_image() -> None:
    img, mask = _scene()
    for seed in range(10):
        out, m = apply("vand2", img, mask, np.random.default_rng(seed))
        assert set(np.unique(m)) <= {0, 1}
        bright = out.max(2) > 60
        # Photometric changes and a 3x3 blur only touch the object's edges.
        assert (bright == m.astype(bool)).mean() > 0.97
        assert abs(int(m.sum()) - int(mask.sum())) < 0.1 * mask.sum()  # rotation keeps the area


def test_corruptions_change_image_not_mask() -> None:
    img, mask = _scene()
    for c in ("brightness", "contrast", "defocus", "noise"):
        out, m = apply(c, img, mask, np.random.default_rng(0))
        assert m is mask and not np.array_equal(out, img)
    assert apply("contrast", img, mask, np.random.default_rng(0))[0].std() < img.std()
    assert apply("brightness", img, mask, np.random.default_rng(0))[0].mean() > img.mean()


def test_condition_lists() -> None:
    assert conditions("none") == ["clean"]
    assert conditions("vand2") == ["clean", "vand2"]
    assert conditions("all") == list(CONDITIONS)
    with pytest.raises(ValueError, match="--perturb"):
        conditions("bogus")
