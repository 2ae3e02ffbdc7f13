"""Pre- and post-processing shared with gnld (see ../BUNDLE.md).

Everything that gnld's Go pipeline must reproduce lives here, so that
train/deploy skew has one place to hide and one test to catch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_SIZE = 256
# ImageNet statistics on pixel/255, RGB order: the defaults for torchvision
# teachers. A model's real values come from its teacher (gnl.teacher.Teacher
# .mean/.std; EfficientNet-Lite wants (x-127)/128) and travel in model.json.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
BLUR_SIGMA = 4.0


@dataclass(frozen=True)
class InputSpec:
    """How an 8-bit BGR frame becomes the model's input tensor."""

    width: int = IMAGE_SIZE
    height: int = IMAGE_SIZE
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    dtype: str = "float32"  # float32 | int8 | uint8
    scale: float = 0.0
    zero_point: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class ImageError(ValueError):
    """An image file that cannot be used, with the path and the fix."""


def read_bgr(path: str | Path) -> np.ndarray:
    """Read an image as 8-bit BGR; a clear error names the file otherwise."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageError(
            f"{path}: cannot read image (missing, unreadable or not an image); "
            "check the file exists and is a JPEG/PNG/BMP"
        )
    return img


def resize_rgb(bgr: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Colour conversion then INTER_LINEAR resize, uint8 HxWx3."""
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if spec.channel_order == "RGB" else bgr
    return cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def lookup_tables(spec: InputSpec = InputSpec()) -> np.ndarray:
    """3x256 table: pixel value -> input tensor value, per channel.

    Go builds the same table (pipeline/normalize.go); both sides index it,
    so normalisation and quantization agree bit for bit.
    """
    px = np.arange(256, dtype=np.float64) / 255.0
    tables = []
    for c in range(3):
        x = (px - spec.mean[c]) / spec.std[c]
        if spec.dtype in ("int8", "uint8"):
            lo, hi = (-128, 127) if spec.dtype == "int8" else (0, 255)
            q = _round_half_away(x / spec.scale) + spec.zero_point
            x = np.clip(q, lo, hi)
        tables.append(x)
    dtype = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}[spec.dtype]
    return np.stack(tables).astype(dtype)


def to_input(bgr: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """An 8-bit BGR frame -> 1xHxWx3 model input (NHWC) of spec.dtype."""
    rgb = resize_rgb(bgr, spec)
    t = lookup_tables(spec)
    out = np.empty(rgb.shape, dtype=t.dtype)
    for c in range(3):
        out[..., c] = t[c][rgb[..., c]]
    return out[None]


def to_tensor(bgr: np.ndarray, spec: InputSpec = InputSpec()) -> "np.ndarray":
    """Float 3xHxW (CHW) input for PyTorch training, same values as to_input."""
    float_spec = InputSpec(
        spec.width, spec.height, spec.channel_order, spec.mean, spec.std, "float32"
    )
    return np.ascontiguousarray(to_input(bgr, float_spec)[0].transpose(2, 0, 1))


def postprocess(raw_map: np.ndarray, spec: InputSpec = InputSpec(),
                blur_sigma: float = BLUR_SIGMA) -> tuple[np.ndarray, float]:
    """Model output map (h x w, float) -> (blurred map at input size, score)."""
    m = np.asarray(raw_map, dtype=np.float32).squeeze()
    if m.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D after squeeze, got shape {raw_map.shape}")
    m = cv2.resize(m, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
    m = cv2.GaussianBlur(m, (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma)
    return m, float(m.max())
