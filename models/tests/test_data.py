"""data.py: MVTec layout reading and its errors, on small synthetic folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gnl.data import (DatasetError, Sample, fingerprint, load_image, load_mask, test_samples,
                      train_images)


def make_mvtec(root: Path, n_train: int = 4, n_good: int = 3, n_defect: int = 3,
               size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A tiny MVTec-layout folder: textured normal images, defects = bright squares.

    `size` is (width, height). Returns root.
    """
    rng = np.random.default_rng(seed)
    w, h = size

    def normal() -> np.ndarray:
        base = rng.normal(120, 8, (h, w)).astype(np.float32)
        base = cv2.GaussianBlur(base, (0, 0), 1.5)
        return np.clip(np.repeat(base[..., None], 3, 2), 0, 255).astype(np.uint8)

    for i in range(n_train):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), normal())
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), normal())
    (root / "test" / "spot").mkdir(parents=True)
    (root / "ground_truth" / "spot").mkdir(parents=True)
    for i in range(n_defect):
        img, mask = normal(), np.zeros((h, w), np.uint8)
        y, x = int(rng.integers(4, h - 14)), int(rng.integers(4, w - 14))
        img[y:y + 10, x:x + 10] = 250
        mask[y:y + 10, x:x + 10] = 255
        cv2.imwrite(str(root / "test" / "spot" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth" / "spot" / f"{i:03d}_mask.png"), mask)
    return root


def test_reads_valid_layout(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    train = train_images(root)
    assert [p.name for p in train] == ["000.png", "001.png", "002.png", "003.png"]
    samples = test_samples(root)
    assert [s.label for s in samples] == ["good"] * 3 + ["spot"] * 3
    assert all(s.mask_path is None for s in samples if s.label == "good")
    assert samples[3].mask_path == root / "ground_truth" / "spot" / "000_mask.png"
    img = load_image(samples[3].path)
    m = load_mask(samples[3], img.shape[1], img.shape[0])
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1} and m.sum() == 100
    assert load_mask(samples[0], 48, 40).sum() == 0


def test_missing_train_folder_names_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    for p in (root / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="train/good: no images"):
        train_images(root)
    (root / "train" / "good").rmdir()
    with pytest.raises(DatasetError, match=r"train/good: missing"):
        train_images(root)


def test_unreadable_image_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    bad = root / "test" / "good" / "001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=str(bad)):
        test_samples(root)
    # Right signature, truncated body: caught when decoded, still naming the file.
    data = (root / "test" / "good" / "000.png").read_bytes()
    bad.write_bytes(data[:40])
    with pytest.raises(DatasetError, match=str(bad)):
        for s in test_samples(root):
            load_image(s.path)


def test_stray_file_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "train" / "good" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="notes.txt: not an image"):
        train_images(root)


def test_missing_mask_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "ground_truth" / "spot" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"001.png: defect image without a mask; expected .*001_mask.png"):
        test_samples(root)


def test_orphan_mask_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "test" / "spot" / "002.png").unlink()
    with pytest.raises(DatasetError, match="002_mask.png: mask without a test image"):
        test_samples(root)


def test_wrong_size_mask_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    mask = root / "ground_truth" / "spot" / "000_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 12), np.uint8))
    s = test_samples(root)[3]
    img = load_image(s.path)
    with pytest.raises(DatasetError, match=rf"{mask}: mask is 12x10 but its image .* is 48x40"):
        load_mask(s, img.shape[1], img.shape[0])


def test_file_directly_in_test_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    cv2.imwrite(str(root / "test" / "x.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="x.png: file directly under"):
        test_samples(root)


def test_fingerprint_depends_on_names_and_sizes_only(tmp_path: Path) -> None:
    a = make_mvtec(tmp_path / "a")
    b = make_mvtec(tmp_path / "b")
    fa, fb = fingerprint(train_images(a)), fingerprint(train_images(b))
    assert fa == fb and len(fa) == 64
    assert fingerprint(list(reversed(train_images(a)))) == fa
    (b / "train" / "good" / "003.png").rename(b / "train" / "good" / "004.png")
    assert fingerprint(train_images(b)) != fa
    assert Sample(Path("x"), "good", None).anomalous is False
