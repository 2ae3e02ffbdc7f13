"""Which training images are held back, and which calibrate the int8 export.

`gnl fit` (gnl/train.py) and `gnl export --data` (gnl/export.py) both split
a folder's training images the same way: a seeded ~10% held back for the
threshold, the calibration set and the memory's weight; the rest trained on,
of which EXPORT_CALIB_IMAGES spread evenly calibrate the int8 export. Both
import it from here, so neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

HOLDOUT_FRACTION = 0.1
MIN_HELD_OUT = 2  # the threshold rule fits a distribution: it needs two scores at least
HOLDOUT_STREAM = 3  # random stream default_rng([seed, HOLDOUT_STREAM]): which images are held back
EXPORT_CALIB_IMAGES = 32  # training images, spread evenly, for int8 calibration


def split_holdout(paths: Sequence[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """(train, held_out): a seeded ~10% of the images (at least MIN_HELD_OUT)
    held back for calibration."""
    n_hold = max(MIN_HELD_OUT, round(len(paths) * HOLDOUT_FRACTION))
    held = set(np.random.default_rng([seed, HOLDOUT_STREAM]).permutation(len(paths))[:n_hold].tolist())
    return ([p for i, p in enumerate(paths) if i not in held],
            [p for i, p in enumerate(paths) if i in held])


def export_calibration(train_paths: Sequence[Path]) -> list[Path]:
    """The EXPORT_CALIB_IMAGES training images, spread evenly, that the
    int8 export calibrates on (`gnl fit`, and `gnl export --data`)."""
    step = max(len(train_paths) // EXPORT_CALIB_IMAGES, 1)
    return list(train_paths[::step][:EXPORT_CALIB_IMAGES])
