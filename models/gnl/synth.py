"""DRAEM-style synthetic anomalies (Zavrtanik et al., "DRAEM", ICCV 2021).

`synthesize(bgr, rng) -> (image, mask)`: a Perlin-noise mask (cell counts
2^0..2^5 per axis, drawn independently, noise rotated by a random angle,
thresholded at 0.5, as DRAEM) filled with a texture blended into the image:
    out = img * (1 - M) + (1 - beta) * texture * M + beta * img * M,
    beta ~ U(0, 0.8).
DRAEM draws textures from DTD; this toolchain ships no data set, so the
texture is procedural, one of (uniform choice):
  * "fractal": 4-octave fractal Perlin noise mapped between two random colours;
  * "stripes": a sine grating of random period and angle between two colours;
  * "self":    the image itself rotated by 90/180/270 degrees and its
               patches (2x2, 4x4 or 8x8 grid) shuffled - a self-augmentation
               in the spirit of DRAEM/CutPaste that keeps the image's statistics.
With `stroke_share` > 0, that share of the masks is instead one to three
thin curved strokes (`stroke_mask`): a random walk of slowly turning heading,
0.5-3% of the image's short side wide and 20-80% of its long side long. Cracks,
scratches and hairlines are thin and long, which a thresholded Perlin blob
rarely is. A stroke is filled either with a texture (as above) or by shading
the image itself darker or lighter (gain 0.2-0.7 or 1.3-2.0), as a crack or a
scratch changes the surface's brightness rather than its colour.
Used by stage 2 of `gnl fit` (segmentation head) and to check the model on
held-back normal images; never on a test set.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

PERLIN_MAX_LOG2 = 5
THRESHOLD = 0.5
BETA_MAX = 0.8
MAX_TRIES = 20
STROKES_MAX = 3  # strokes per stroke mask: 1..3
STROKE_POINTS = 48  # vertices of each stroke's polyline
STROKE_LENGTH = (0.2, 0.8)  # of the image's long side
STROKE_WIDTH = (0.005, 0.03)  # of the image's short side (at least 1 px)
STROKE_TURN = (0.02, 0.3)  # s.d. of the heading change per vertex, radians: straight .. wiggly
SHADE_DARK, SHADE_LIGHT = (0.2, 0.7), (1.3, 2.0)  # gains of the shading fill


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with res[0] x res[1] cells, values in about [-1, 1].

    Same construction as DRAEM's `rand_perlin_2d_np` (quintic fade, unit
    gradients, scaled by sqrt 2); any shape (not only multiples of res).
    """
    h, w = shape
    y = np.arange(h, dtype=np.float64) * res[0] / h
    x = np.arange(w, dtype=np.float64) * res[1] / w
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]
    angles = rng.uniform(0, 2 * math.pi, size=(res[0] + 1, res[1] + 1))
    gy, gx = np.sin(angles), np.cos(angles)

    def corner(dy: int, dx: int) -> np.ndarray:
        cy, cx = iy[:, None] + dy, ix[None, :] + dx
        return gy[cy, cx] * (fy - dy) + gx[cy, cx] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) + ux * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + ux * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2) * (top + uy * (bottom - top))


def _rotate(a: np.ndarray, angle: float, border: int) -> np.ndarray:
    h, w = a.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A binary float32 mask from thresholded, rotated Perlin noise; never empty."""
    for _ in range(MAX_TRIES):
        res = (2 ** int(rng.integers(0, PERLIN_MAX_LOG2 + 1)), 2 ** int(rng.integers(0, PERLIN_MAX_LOG2 + 1)))
        n = _rotate(perlin(shape, res, rng).astype(np.float32), rng.uniform(-90, 90), cv2.BORDER_REFLECT)
        mask = (n > THRESHOLD).astype(np.float32)
        if mask.any():
            return mask
    raise RuntimeError(f"no Perlin mask above {THRESHOLD} in {MAX_TRIES} draws for shape {shape}")


def stroke_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A binary float32 mask of 1..STROKES_MAX thin curved strokes; never empty."""
    h, w = shape
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, STROKES_MAX + 1))):
        step = rng.uniform(*STROKE_LENGTH) * max(h, w) / STROKE_POINTS
        heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, rng.uniform(*STROKE_TURN), STROKE_POINTS))
        start = rng.uniform((0, 0), (w, h))
        pts = start + np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], axis=1), axis=0)
        width = max(1, int(round(rng.uniform(*STROKE_WIDTH) * min(h, w))))
        cv2.polylines(canvas, [np.rint(np.vstack([start, pts])).astype(np.int32)], False, 255, thickness=width)
    if not canvas.any():  # every stroke left the image: draw one through its centre
        cv2.line(canvas, (0, h // 2), (w - 1, h // 2), 255, 1)
    return (canvas > 0).astype(np.float32)


def shade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image itself, darker or lighter by one random gain (float32)."""
    gain = rng.uniform(*(SHADE_DARK if rng.random() < 0.5 else SHADE_LIGHT))
    return img.astype(np.float32) * gain


def _two_colours(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map t in [0, 1] (H x W) linearly between two random BGR colours."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    return c0 + t[..., None].astype(np.float32) * (c1 - c0)


def fractal_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Four octaves of Perlin noise (2..16 cells, amplitude halving) in two colours."""
    n = sum(0.5**o * perlin(shape, (2 ** (o + 1), 2 ** (o + 1)), rng) for o in range(4))
    n = (n - n.min()) / (np.ptp(n) + 1e-9)
    return _two_colours(n, rng)


def stripe_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A sine grating (period 4 px to a quarter of the image, any angle) in two colours."""
    h, w = shape
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4, max(h, w) / 4)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period
    return _two_colours(0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * math.pi)), rng)


def self_texture(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image rotated by 90/180/270 degrees with its grid patches shuffled."""
    h, w = img.shape[:2]
    x = np.rot90(img, int(rng.integers(1, 4)))
    x = cv2.resize(np.ascontiguousarray(x), (w, h), interpolation=cv2.INTER_LINEAR)  # (h, w) swapped if not square
    g = int(rng.choice([2, 4, 8]))
    ph, pw = h // g, w // g
    patches = [x[i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].copy() for i in range(g) for j in range(g)]
    for k, p in enumerate(rng.permutation(len(patches))):
        i, j = divmod(k, g)
        x[i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] = patches[p]
    return x.astype(np.float32)


def texture(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One procedural texture (float32 BGR, image's shape); see the module docstring."""
    kind = int(rng.integers(3))
    if kind == 0:
        return fractal_texture(img.shape[:2], rng)
    if kind == 1:
        return stripe_texture(img.shape[:2], rng)
    return self_texture(img, rng)


def synthesize(bgr: np.ndarray, rng: np.random.Generator,
               stroke_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """8-bit BGR image -> (image with a synthetic anomaly, uint8; mask, float32 {0, 1} H x W).

    `stroke_share` of the masks are thin strokes; the rest are Perlin blobs.
    With 0 no random number is drawn for the choice (the same draws as before
    strokes existed)."""
    if stroke_share > 0 and rng.random() < stroke_share:
        mask = stroke_mask(bgr.shape[:2], rng)
        tex = shade(bgr, rng) if rng.random() < 0.5 else texture(bgr, rng)
    else:
        mask = perlin_mask(bgr.shape[:2], rng)
        tex = texture(bgr, rng)
    return blend(bgr, mask, tex, rng.uniform(0, BETA_MAX)), mask


def blend(bgr: np.ndarray, mask: np.ndarray, tex: np.ndarray, beta: float) -> np.ndarray:
    """8-bit `bgr` with `tex` laid over it under `mask` (float {0, 1} H x W),
    keeping the share `beta` of the image there (the module doc's formula)."""
    img = bgr.astype(np.float32)
    m = mask[..., None]
    out = img * (1 - m) + (1 - beta) * tex * m + beta * img * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
