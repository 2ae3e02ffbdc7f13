"""Augmentation of normal images for stage 1 (the "augmented view").

`augment(bgr, rng)` takes and returns 8-bit BGR (H x W x 3) and draws every
random number from `rng`, so a seeded generator gives the same output.
With p = 1/2 it is an AugMix mix (Hendrycks et al., "AugMix", ICLR 2020:
width 3, depth 1-3, Dirichlet chain weights, Beta skip weight) of mild
brightness, contrast, Gaussian-noise, colour and sharpness changes;
otherwise a random chain of brightness, contrast, noise and rotation
(a multiple of 90 degrees plus up to +-30, corners filled with black).

The rotation fill is black (0) because that is what a rotated test image
shows: torchvision's RandomRotation (VAND 2.0) fills with 0. Training with
grey 114 while the test fills black taught the model that black corners are
anomalous (models/RESULTS.md, the "fill" row).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from gnl.perturb import rotate

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]
FILL = 0  # rotation fill: black, as torchvision's RandomRotation (see module doc)
AUGMIX_WIDTH = 3
AUGMIX_MAX_DEPTH = 3


def _grey(x: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) of a float BGR image, H x W x 1."""
    return (x @ np.array([0.114, 0.587, 0.299], dtype=np.float32))[..., None]


def brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale intensities by U(0.8, 1.2)."""
    return x * rng.uniform(0.8, 1.2)


def contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale deviations from the mean grey level by U(0.75, 1.25)."""
    mean = float(_grey(x).mean())
    return mean + (x - mean) * rng.uniform(0.75, 1.25)


def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise, sigma ~ U(2, 8) grey levels."""
    return x + rng.normal(0.0, rng.uniform(2.0, 8.0), size=x.shape).astype(np.float32)


def colour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Saturation change, as PIL's ImageEnhance.Color (blend with grey)."""
    g = _grey(x)
    return g + (x - g) * rng.uniform(0.6, 1.4)


def sharpness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PIL's ImageEnhance.Sharpness: blend with its 3x3 smoothing kernel."""
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0
    smooth = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    return smooth + (x - smooth) * rng.uniform(0.5, 1.5)


def rotation(x: np.ndarray, rng: np.random.Generator, fill: int = FILL) -> np.ndarray:
    """Rotate about the centre by 90k + U(-30, 30) degrees; corners filled with `fill`."""
    return rotate(x, 90.0 * int(rng.integers(4)) + rng.uniform(-30.0, 30.0), fill=fill)


AUGMIX_OPS: tuple[Op, ...] = (brightness, contrast, noise, colour, sharpness)
CHAIN_OPS: tuple[Op, ...] = (brightness, contrast, noise, rotation)


def augmix(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AugMix on a float image: (1 - m) x + m sum_i w_i chain_i(x)."""
    weights = rng.dirichlet([1.0] * AUGMIX_WIDTH)
    m = rng.beta(1.0, 1.0)
    mix = np.zeros_like(x)
    for w in weights:
        y = x
        for _ in range(int(rng.integers(1, AUGMIX_MAX_DEPTH + 1))):
            y = AUGMIX_OPS[int(rng.integers(len(AUGMIX_OPS)))](y, rng)
        mix += w * np.clip(y, 0, 255)
    return (1 - m) * x + m * mix


def random_chain(x: np.ndarray, rng: np.random.Generator, fill: int = FILL) -> np.ndarray:
    """1-4 distinct ops from CHAIN_OPS in random order."""
    order = rng.permutation(len(CHAIN_OPS))[: int(rng.integers(1, len(CHAIN_OPS) + 1))]
    for i in order:
        op = CHAIN_OPS[i]
        x = np.clip(rotation(x, rng, fill) if op is rotation else op(x, rng), 0, 255)
    return x


def augment(bgr: np.ndarray, rng: np.random.Generator, fill: int = FILL) -> np.ndarray:
    """An augmented view of a normal 8-bit BGR image (same shape, uint8);
    `fill` is the grey level of the corners a rotation uncovers."""
    x = bgr.astype(np.float32)
    y = augmix(x, rng) if rng.random() < 0.5 else random_chain(x, rng, fill)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)
