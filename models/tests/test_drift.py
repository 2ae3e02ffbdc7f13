"""drift.py: features respond to the changes they are meant for; drift.json
round trip on real MTD images with the tiny bundle; CLI errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from gnl import drift
from gnl.cli import main as gnl_main

MTD = Path(os.environ.get("MTD", Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"))
TINY = Path(__file__).resolve().parents[1] / "testdata" / "tiny"


def _images(n: int, folder: str = "train/good") -> list[Path]:
    files = sorted((MTD / folder).glob("*.jpg"))
    if len(files) < n:
        pytest.skip(f"MTD not found at {MTD}; set MTD")
    return files[:: len(files) // n][:n]


def _tile() -> np.ndarray:
    """A grey tile with vertical stripes and some texture."""
    rng = np.random.default_rng(0)
    img = np.full((120, 160), 110, np.uint8)
    img[:, ::8] = 170
    img = cv2.add(img, rng.integers(0, 20, img.shape, dtype=np.uint8))
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)


def test_raw_features_respond() -> None:
    base = drift.raw_features(_tile())
    brighter = drift.raw_features(cv2.add(_tile(), np.full_like(_tile(), 60)))
    blurred = drift.raw_features(cv2.GaussianBlur(_tile(), (0, 0), 3))
    tinted = _tile().copy()
    tinted[..., 2] = cv2.add(tinted[..., 2], np.full_like(tinted[..., 2], 30))
    assert brighter["brightness"] > base["brightness"] + 0.2
    assert brighter["black_level"] > base["black_level"] + 0.2
    assert blurred["sharpness"] < base["sharpness"] - 0.5
    assert base["colour_rg"] == 0 and drift.raw_features(tinted)["colour_rg"] > 0.1
    # Vertical stripes: horizontal gradients, angle 0 (or 180), bin 0.
    assert base["orientation_hist"].argmax() == 0 and abs(base["orientation_hist"].sum() - 1) < 1e-9
    assert base["thumbnail"].dtype == np.uint8 and base["thumbnail"].shape == (drift.THUMB_SIZE ** 2,)


def test_raw_features_rejects_grey() -> None:
    with pytest.raises(drift.DriftError, match="8-bit BGR"):
        drift.raw_features(np.zeros((10, 10), np.uint8))


def test_write_drift_on_mtd(tmp_path: Path) -> None:
    train = _images(12)
    held = _images(4, "test/good")
    bundle = tmp_path / "bundle"
    shutil.copytree(TINY, bundle)
    out = drift.write_drift(bundle, train, held, fingerprint="fp")
    stats = json.loads(out.read_text())
    assert out.name == "drift.json" and stats["format_version"] == 1 and stats["images"] == 12
    assert set(stats["features"]) == {*drift.TWO_SIDED, *drift.ONE_SIDED}
    assert len(stats["thumbnails"]) == 12 and all(len(h) == 2 * drift.THUMB_SIZE ** 2 for h in stats["thumbnails"])
    for name, f in stats["features"].items():
        assert f["scale"] >= drift.FLOORS[name] and f["quantiles"]["0.005"] <= f["median"] <= f["quantiles"]["0.995"]
    assert stats["features"]["score"]["count"] == 4 and len(stats["features"]["score"]["values"]) == 4
    # A training image is at layout distance 0 from itself.
    f = drift.features(cv2.imread(str(train[3])), stats)
    assert f["layout"] == 0.0
    # Rotated, it is further from every training image than they are from
    # each other (12 images far apart: a modest margin), and its edges point
    # elsewhere.
    r = drift.features(drift.rotate(cv2.imread(str(train[3]))), stats)
    assert r["layout"] > stats["features"]["layout"]["median"] and r["orientation"] > 2 * f["orientation"]


def test_cli_drift_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "train" / "good").mkdir(parents=True)
    for p in _images(6):
        shutil.copy(p, data / "train" / "good")
    bundle = tmp_path / "bundle"
    shutil.copytree(TINY, bundle)
    assert gnl_main(["drift-stats", "--data", str(data), "--bundle", str(bundle)]) == 0
    assert "6 training images" in capsys.readouterr().out
    stats = json.loads((bundle / "drift.json").read_text())
    assert "score" not in stats["features"]  # no calibration.json: no held-back images known
    # Held-back images named in calibration.json must exist.
    (bundle / "calibration.json").write_text(json.dumps({"held_out": ["missing.jpg"]}))
    with pytest.raises(drift.DriftError, match="missing.jpg.*held-back image"):
        gnl_main(["drift-stats", "--data", str(data), "--bundle", str(bundle)])
    with pytest.raises(drift.DriftError, match="no model.json"):
        drift.write_drift(tmp_path, _images(2))


def test_perturb_writes_every_condition(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), _tile())
    assert drift.main(["perturb", "--out", str(tmp_path / "out"), str(img)]) == 0
    for name in ("brightness", "contrast", "defocus", "noise", "rotation", "moved"):
        out = cv2.imread(str(tmp_path / "out" / name / "a.png"))
        assert out is not None and not np.array_equal(out[: out.shape[0], : out.shape[1]], _tile()[: out.shape[0], : out.shape[1]])
    moved = cv2.imread(str(tmp_path / "out" / "moved" / "a.png"))
    assert moved.shape == (90, 120, 3)
