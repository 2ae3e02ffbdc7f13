"""Drift policies: the changes between training images and the line that the
model must treat as normal, declared when it is trained.

GNL learns normality from augmented normal images, so what it tolerates is
what its augmentation showed it. A policy names that augmentation, and
`gnl fit --drift-policy NAME` applies it everywhere a normal image is
varied, so that the model, its threshold and the drift monitor agree:
- stage 1's augmented views (the student learns to reproduce the teacher on them),
- the segmentation head's augmented images (labelled normal before an anomaly is drawn),
- the memory's views of the training images (their patches count as normal),
- the threshold: held-back normal images scored clean and in THRESHOLD_VIEWS
  views each (gnl/export.py), so that drift inside the policy does not cross it,
- the drift monitor's reference (gnl/drift.py): training images and their
  views, so that drift inside the policy stays inside the normal range and
  drift outside it still warns.

Policies (`view(bgr, rng)` takes and returns 8-bit BGR, draws only from rng):

- **product** (the default): what a fixed camera over parts that arrive one
  way round drifts by. Each family with p = 1/2, independently:
  rotation by U(-20, 20) degrees (a part placed a little askew, a camera
  knocked), black corners; light (brightness and contrast x U(0.8, 1.2));
  colour (saturation x U(0.8, 1.2), hue shifted by U(-0.05, 0.05) of the
  circle: white balance); focus (Gaussian blur, sigma U(0.1, 1.5) pixels at
  the model's input size); sensor noise (Gaussian, sigma U(0, 6) grey
  levels). No flips: a mirrored part is a different part unless the line
  says otherwise.
- **product-mirrored**: product, plus horizontal and vertical flips (p 1/2
  each), for parts that can arrive mirrored (symmetric blanks, tiles, webs).
- **vand2**: the VAND 2.0 benchmark's own perturbation (gnl/perturb.py) on
  every view: flips, rotation U(-20, 20), ColorJitter 0.1 with hue, 3x3
  blur sigma U(0.1, 2). Trains on the drift the benchmark tests.
- **legacy**: what gnl fit did before policies (gnl/augment.py: AugMix of
  light, noise, saturation and sharpness, or a chain with rotation by 90k +
  U(-30, 30)), and a threshold from clean held-back images only. Old
  checkpoints resume with it.

The magnitudes are a camera's, not a data set's: nothing here was fit to MTD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from gnl import augment, perturb

PRODUCT, PRODUCT_MIRRORED, VAND2, LEGACY = "product", "product-mirrored", "vand2", "legacy"
POLICIES = (PRODUCT, PRODUCT_MIRRORED, VAND2, LEGACY)
DEFAULT = PRODUCT
THRESHOLD_VIEWS = 4  # views per held-back image that the threshold also sees (not for legacy)
THRESHOLD_STREAM = 5  # the threshold's views: default_rng([seed, THRESHOLD_STREAM]) (gnl/train.py's streams)


@dataclass(frozen=True)
class Families:
    """Magnitudes of a product policy (see the module docstring)."""
    family_p: float = 0.5          # each family applied with this probability
    flip_p: float = 0.0            # per axis
    rotate_deg: float = 20.0       # U(-r, r), black corners
    brightness: float = 0.2        # x U(1 - b, 1 + b)
    contrast: float = 0.2          # deviations from the mean grey x U(1 - c, 1 + c)
    saturation: float = 0.2        # x U(1 - s, 1 + s)
    hue: float = 0.05              # + U(-h, h) of the colour circle
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # Gaussian, pixels
    noise_sigma: float = 6.0       # Gaussian, U(0, n) grey levels


PRODUCT_FAMILIES = Families()
MIRRORED_FAMILIES = Families(flip_p=0.5)


def _luma(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of a float BGR image, H x W x 1."""
    return (x @ np.array([0.114, 0.587, 0.299], dtype=np.float32))[..., None]


def _hue(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of a float BGR image in [0, 255] by `shift` of the circle."""
    hsv = cv2.cvtColor(np.ascontiguousarray(np.clip(x, 0, 255) / 255.0, dtype=np.float32), cv2.COLOR_BGR2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0


def product_view(bgr: np.ndarray, rng: np.random.Generator, f: Families = PRODUCT_FAMILIES) -> np.ndarray:
    """A product-policy view: geometry first, then light and colour in random
    order, then focus, then sensor noise (the order a camera applies them)."""
    x = bgr
    p = f.family_p
    if f.flip_p and rng.random() < f.flip_p:
        x = x[:, ::-1]
    if f.flip_p and rng.random() < f.flip_p:
        x = x[::-1]
    if rng.random() < p:
        x = perturb.rotate(x, float(rng.uniform(-f.rotate_deg, f.rotate_deg)))
    x = x.astype(np.float32)
    for op in rng.permutation(2):
        if rng.random() >= p:
            continue
        if op == 0:  # light
            x = x * rng.uniform(1 - f.brightness, 1 + f.brightness)
            mean = float(_luma(x).mean())
            x = mean + (x - mean) * rng.uniform(1 - f.contrast, 1 + f.contrast)
        else:  # colour
            g = _luma(x)
            x = g + (x - g) * rng.uniform(1 - f.saturation, 1 + f.saturation)
            x = _hue(x, float(rng.uniform(-f.hue, f.hue)))
        x = np.clip(x, 0, 255)
    if rng.random() < p:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(*f.blur_sigma)), borderType=cv2.BORDER_REFLECT)
    if rng.random() < p:
        x = x + rng.normal(0.0, rng.uniform(0.0, f.noise_sigma), size=x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def vand2_view(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The VAND 2.0 perturbation of the image (gnl.perturb.vand2)."""
    return perturb.vand2(bgr, np.zeros(bgr.shape[:2], np.uint8), rng)[0]


def view_fn(name: str, rotation_fill: int = augment.FILL) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The policy's view function: (8-bit BGR, rng) -> 8-bit BGR of the same shape."""
    if name == PRODUCT:
        return product_view
    if name == PRODUCT_MIRRORED:
        return lambda bgr, rng: product_view(bgr, rng, MIRRORED_FAMILIES)
    if name == VAND2:
        return vand2_view
    if name == LEGACY:
        return lambda bgr, rng: augment.augment(bgr, rng, rotation_fill)
    raise ValueError(f"unknown drift policy {name!r}; choose one of {', '.join(POLICIES)}")


def threshold_views(name: str) -> int:
    """Views per held-back normal image the threshold sees besides the clean one."""
    return 0 if name == LEGACY else THRESHOLD_VIEWS


def describe(name: str) -> dict:
    """model.json's `drift_policy`: the name, what it varies and by how much."""
    if name in (PRODUCT, PRODUCT_MIRRORED):
        fam = asdict(MIRRORED_FAMILIES if name == PRODUCT_MIRRORED else PRODUCT_FAMILIES)
        fam["blur_sigma"] = list(fam["blur_sigma"])
    elif name == VAND2:
        fam = {"family_p": 1.0, "flip_p": perturb.FLIP_P, "rotate_deg": perturb.ROTATE_DEG,
               "brightness": perturb.JITTER, "contrast": perturb.JITTER, "saturation": perturb.JITTER,
               "hue": perturb.JITTER, "blur_sigma": list(perturb.BLUR_SIGMA), "blur_kernel": perturb.BLUR_KSIZE,
               "noise_sigma": 0.0}
    elif name == LEGACY:
        fam = {"augmix_p": 0.5, "brightness": 0.2, "contrast": 0.25, "saturation": 0.4, "noise_sigma": [2.0, 8.0],
               "rotate_deg": "90k + U(-30, 30) in the chain", "flip_p": 0.0, "hue": 0.0, "blur_sigma": None}
    else:
        raise ValueError(f"unknown drift policy {name!r}; choose one of {', '.join(POLICIES)}")
    return {"name": name, "threshold_views": threshold_views(name), "families": fam}
