"""Reading an MVTec-AD-layout folder, strictly.

The layout (Bergmann et al., "MVTec AD", CVPR 2019; the same one anomalib's
`Folder`/`MVTec` datamodules read)::

    ROOT/train/good/*.png|jpg          normal images for training
    ROOT/test/good/*                   normal test images
    ROOT/test/<defect>/*               defective test images
    ROOT/ground_truth/<defect>/<stem>_mask.png   one pixel mask per defect image

Every problem is a `DatasetError` that names the file and says how to fix it;
nothing is silently skipped (a stray file, an image without a mask, a mask
without an image and a mask of the wrong size are all errors), so a metric is
never computed on a quietly shrunken test set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gnl.preprocess import ImageError, read_bgr

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GOOD = "good"
MASK_SUFFIX = "_mask.png"


class DatasetError(ValueError):
    """A dataset folder that does not follow the MVTec layout; names the path and the fix."""


@dataclass(frozen=True)
class Sample:
    """One test image: its label ("good" or the defect folder name) and mask (None for good)."""

    path: Path
    label: str
    mask_path: Path | None

    @property
    def anomalous(self) -> bool:
        """True for defect images (label other than "good")."""
        return self.label != GOOD


def _image_files(folder: Path) -> list[Path]:
    """Sorted image files of `folder`; any other entry is an error naming it."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            raise DatasetError(
                f"{p}: unexpected folder inside {folder}; the MVTec layout has images only "
                "here, so move or remove it"
            )
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"{p}: not an image file (expected one of {sorted(IMAGE_SUFFIXES)}); "
                "remove it from the dataset folder"
            )
        if p.stat().st_size == 0 or not cv2.haveImageReader(str(p)):
            raise DatasetError(
                f"{p}: unreadable image (empty or not a {p.suffix} file); replace or remove it"
            )
        files.append(p)
    return files


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(
            f"{path}: missing {what}; expected the MVTec layout "
            "ROOT/train/good, ROOT/test/<good|defect>, ROOT/ground_truth/<defect>"
        )
    return path


def train_images(root: str | Path) -> list[Path]:
    """Sorted images of ROOT/train/good; error if the folder is missing or empty."""
    folder = _require_dir(Path(root) / "train" / GOOD, "folder of normal training images")
    files = _image_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no images; put the normal training images there")
    return files


def test_samples(root: str | Path) -> list[Sample]:
    """All test images (sorted by label, then name) with their masks.

    Defect images need `ground_truth/<label>/<stem>_mask.png`; good images must
    have none. A mask with no image is an error too (a misnamed mask would
    otherwise leave its image unmatched).
    """
    root = Path(root)
    test_dir = _require_dir(root / "test", "test folder")
    gt_dir = root / "ground_truth"
    samples: list[Sample] = []
    labels = sorted(p for p in test_dir.iterdir())
    for label_dir in labels:
        if not label_dir.is_dir():
            raise DatasetError(
                f"{label_dir}: file directly under {test_dir}; test images go in "
                "test/good/ or test/<defect>/"
            )
        label = label_dir.name
        images = _image_files(label_dir)
        if not images:
            raise DatasetError(f"{label_dir}: empty test folder; add images or remove it")
        if label == GOOD:
            if (gt_dir / GOOD).exists():
                raise DatasetError(
                    f"{gt_dir / GOOD}: good images have no masks; remove this folder"
                )
            samples += [Sample(p, GOOD, None) for p in images]
            continue
        mask_dir = _require_dir(gt_dir / label, f"mask folder for defect '{label}'")
        expected = {}
        for p in images:
            mask = mask_dir / f"{p.stem}{MASK_SUFFIX}"
            if not mask.is_file():
                raise DatasetError(
                    f"{p}: defect image without a mask; expected {mask} "
                    "(white = defect, same size as the image)"
                )
            expected[mask.name] = p
            samples.append(Sample(p, label, mask))
        for m in sorted(mask_dir.iterdir()):
            if m.name not in expected:
                raise DatasetError(
                    f"{m}: mask without a test image (expected test/{label}/"
                    f"{m.name.removesuffix(MASK_SUFFIX)}.<ext>); rename or remove it"
                )
    if not samples:
        raise DatasetError(f"{test_dir}: no test images")
    if gt_dir.is_dir():
        for d in sorted(gt_dir.iterdir()):
            if not (test_dir / d.name).is_dir():
                raise DatasetError(
                    f"{d}: masks for a defect with no test/{d.name}/ folder; remove it "
                    "or add the images"
                )
    return samples


# Keep pytest from collecting this function when a test module imports it by name.
test_samples.__test__ = False  # type: ignore[attr-defined]


def load_image(path: str | Path) -> np.ndarray:
    """8-bit BGR image; `DatasetError` naming the file if it cannot be decoded."""
    try:
        return read_bgr(path)
    except ImageError as e:
        raise DatasetError(str(e)) from e


def load_mask(sample: Sample, width: int, height: int) -> np.ndarray:
    """The sample's mask as uint8 0/1, `height` x `width` (the image's own size).

    Good samples give all zeros. A mask whose size differs from the image is an
    error, not a resize: MVTec masks are pixel-aligned with their image, so a
    size mismatch means the wrong file.
    """
    if sample.mask_path is None:
        return np.zeros((height, width), np.uint8)
    m = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
    if m is None or m.size == 0:
        raise DatasetError(f"{sample.mask_path}: cannot read mask; replace it with a PNG")
    if m.shape != (height, width):
        raise DatasetError(
            f"{sample.mask_path}: mask is {m.shape[1]}x{m.shape[0]} but its image "
            f"{sample.path} is {width}x{height}; masks must match their image pixel for pixel"
        )
    return (m > 127).astype(np.uint8)


def fingerprint(paths: Sequence[str | Path], root: str | Path | None = None) -> str:
    """sha256 over the sorted (relative name, size in bytes) pairs of `paths`.

    Names are relative to `root` (default: the folder the paths share), so the
    same data set copied elsewhere has the same fingerprint (model.json
    `training.fingerprint`, see BUNDLE.md).
    """
    if not paths:
        raise DatasetError("fingerprint of an empty file list; give at least one file")
    abs_paths = [Path(p).resolve() for p in paths]
    base = Path(root).resolve() if root is not None else Path(
        os.path.commonpath([p.parent for p in abs_paths])
    )
    h = hashlib.sha256()
    for rel, size in sorted((p.relative_to(base).as_posix(), p.stat().st_size) for p in abs_paths):
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()
