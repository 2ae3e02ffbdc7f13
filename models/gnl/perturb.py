"""Test-time perturbations: the VAND 2.0 protocol and GNL's own corruption check.

All functions work on 8-bit BGR images (numpy/cv2 only) and, for geometric
changes, move the 0/1 mask with the image.

**vand2** — the perturbation of the VAND 2.0 challenge (CVPR 2024, category
1, "adapt & detect: robust anomaly detection"), a torchvision pipeline
applied to each test image:
``RandomHorizontalFlip(0.5), RandomVerticalFlip(0.5), RandomRotation((-20, 20))``
on image and mask together, then ``ColorJitter(0.1, 0.1, 0.1, 0.1)`` and
``GaussianBlur(3, sigma=(0.1, 2.0))`` on the image only. Rotation keeps the
size and fills with black, as torchvision's default (`expand=False, fill=0`);
the mask is resampled nearest-neighbour, the image bilinearly.

Randomness: the challenge seeded torch's global generator once per process,
so an image's perturbation depended on everything drawn before it. Here each
evaluation run makes one `numpy.random.Generator` from a seed and draws the
images' perturbations from it in sorted sample order, so a (seed, data set)
pair always gives the same perturbed set, on any machine.

**corrupt** — GNL's own check of conditions a fixed camera meets: brightness,
contrast, defocus blur and Gaussian noise, each its own condition, at one
fixed severity (ImageNet-C, Hendrycks & Dietterich, ICLR 2019, severity 3 of
5, the middle one). ImageNet-C's sizes are for 224-pixel images; the defocus
radius is scaled by the image's longer side / 256 (the model input), so the
blur the model sees is the same for any camera resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

CLEAN = "clean"
VAND2 = "vand2"
CORRUPTIONS = ("brightness", "contrast", "defocus", "noise")
CONDITIONS = (CLEAN, VAND2, *CORRUPTIONS)
PERTURB_CHOICES = ("none", "vand2", "corrupt", "all")

# VAND 2.0 parameters.
FLIP_P = 0.5
ROTATE_DEG = 20.0
JITTER = 0.1  # brightness, contrast, saturation, hue
BLUR_KSIZE = 3
BLUR_SIGMA = (0.1, 2.0)

# ImageNet-C severity-3 parameters (imagenet_c/corruptions.py).
BRIGHTNESS = 0.3            # added to HSV value on [0, 1]
CONTRAST = 0.2              # (x - mean) * c + mean
DEFOCUS_RADIUS, DEFOCUS_ALIAS = 6.0, 0.5
NOISE_SIGMA = 0.18          # on [0, 1]
REFERENCE_SIZE = 256


def conditions(perturb: str) -> list[str]:
    """Conditions a `--perturb` choice evaluates (always including clean)."""
    table = {"none": [CLEAN], "vand2": [CLEAN, VAND2], "corrupt": [CLEAN, *CORRUPTIONS],
             "all": list(CONDITIONS)}
    if perturb not in table:
        raise ValueError(f"unknown --perturb {perturb!r}; choose one of {PERTURB_CHOICES}")
    return table[perturb]


def _gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as torchvision's rgb_to_grayscale."""
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _jitter(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """torchvision ColorJitter(0.1, 0.1, 0.1, 0.1): four factors, applied in random order."""
    rgb = bgr[..., ::-1].astype(np.float32) / 255.0
    b, c, s = (float(f) for f in rng.uniform(1 - JITTER, 1 + JITTER, 3))
    h = float(rng.uniform(-JITTER, JITTER))
    for op in rng.permutation(4):
        if op == 0:
            rgb = np.clip(rgb * b, 0, 1)
        elif op == 1:
            rgb = np.clip(c * rgb + (1 - c) * float(_gray(rgb).mean()), 0, 1)
        elif op == 2:
            rgb = np.clip(s * rgb + (1 - s) * _gray(rgb)[..., None], 0, 1)
        else:
            hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)  # H in [0, 360)
            hsv[..., 0] = np.mod(hsv[..., 0] + h * 360.0, 360.0)
            rgb = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)
    return _to_u8(rgb[..., ::-1])


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def rotate(x: np.ndarray, angle: float, interpolation: int = cv2.INTER_LINEAR, fill: float = 0) -> np.ndarray:
    """`x` rotated by `angle` degrees about its centre, same size, corners
    `fill`: black by default (torchvision's RandomRotation: expand=False,
    fill=0). Training's rotation (augment.rotation) turns images with it too."""
    h, w = x.shape[:2]
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(np.ascontiguousarray(x), rot, (w, h), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)


def vand2(bgr: np.ndarray, mask: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One VAND 2.0 perturbation of (image, mask), drawn from `rng`."""
    img, m = bgr, mask
    if rng.random() < FLIP_P:
        img, m = img[:, ::-1], m[:, ::-1]
    if rng.random() < FLIP_P:
        img, m = img[::-1], m[::-1]
    angle = float(rng.uniform(-ROTATE_DEG, ROTATE_DEG))
    img, m = rotate(img, angle), rotate(m, angle, cv2.INTER_NEAREST)
    img = _jitter(img, rng)
    sigma = float(rng.uniform(*BLUR_SIGMA))
    img = cv2.GaussianBlur(img, (BLUR_KSIZE, BLUR_KSIZE), sigma)
    return img, m


def brightness(bgr: np.ndarray) -> np.ndarray:
    """ImageNet-C brightness: add to the HSV value channel."""
    hsv = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)
    hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS, 0, 1)
    return _to_u8(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def contrast(bgr: np.ndarray) -> np.ndarray:
    """ImageNet-C contrast: shrink towards the image mean."""
    x = bgr.astype(np.float32) / 255.0
    mean = x.mean()
    return _to_u8((x - mean) * CONTRAST + mean)


def defocus(bgr: np.ndarray) -> np.ndarray:
    """ImageNet-C defocus blur: a disk kernel (anti-aliased), radius scaled to the image size."""
    scale = max(bgr.shape[:2]) / REFERENCE_SIZE
    radius, alias = DEFOCUS_RADIUS * scale, DEFOCUS_ALIAS * scale
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float32)
    disk = cv2.GaussianBlur(disk, (0, 0), alias)
    disk /= disk.sum()
    return cv2.filter2D(bgr, -1, disk, borderType=cv2.BORDER_REFLECT)


def noise(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C Gaussian noise on [0, 1]."""
    x = bgr.astype(np.float32) / 255.0
    return _to_u8(x + rng.normal(0.0, NOISE_SIGMA, x.shape).astype(np.float32))


_PHOTOMETRIC: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "brightness": brightness, "contrast": contrast, "defocus": defocus,
}


def apply(condition: str, bgr: np.ndarray, mask: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Perturb one (image, mask) under `condition`; draws only from `rng`."""
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected an 8-bit BGR image, got {bgr.dtype} {bgr.shape}")
    if mask.shape != bgr.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {bgr.shape[:2]} differ in size")
    if condition == CLEAN:
        return bgr, mask
    if condition == VAND2:
        return vand2(bgr, mask, rng)
    if condition == "noise":
        return noise(bgr, rng), mask
    if condition in _PHOTOMETRIC:
        return _PHOTOMETRIC[condition](bgr), mask
    raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
