"""gnl.tflite_runner on the committed tiny bundles (models/testdata/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gnl import preprocess
from gnl.tflite_runner import Runner

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"
MTD = Path(os.environ.get("MTD", Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"))


@pytest.fixture(scope="module")
def image() -> Path:
    files = sorted((MTD / "test" / "crack").glob("*.jpg"))
    if not files:
        pytest.skip(f"MTD not found at {MTD}; set MTD")
    return files[0]


@pytest.mark.parametrize("bundle", ["tiny", "tiny-float"])
def test_runner(bundle: str, image: Path) -> None:
    runner = Runner(TESTDATA / bundle)
    bgr = preprocess.read_bgr(image)
    raw = runner.raw_map(bgr)
    assert raw.shape == (32, 40) and raw.dtype == np.float32
    blurred, score = runner.predict(bgr)
    assert blurred.shape == (128, 160)
    assert score == pytest.approx(float(blurred.max()))
    assert np.array_equal(blurred, preprocess.postprocess(raw, runner.spec, runner.blur_sigma)[0])


def test_runner_rejects_wrong_dtype(tmp_path: Path) -> None:
    """model.json must describe the model's real input type."""
    meta = json.loads((TESTDATA / "tiny" / "model.json").read_text())
    meta["input"]["dtype"] = "float32"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    (tmp_path / "model.tflite").write_bytes((TESTDATA / "tiny" / "model.tflite").read_bytes())
    with pytest.raises(ValueError, match="re-export"):
        Runner(tmp_path)


def test_cli_json(image: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTDATA.parent)}
    out = subprocess.run([sys.executable, "-m", "gnl.tflite_runner", str(TESTDATA / "tiny"), str(image), "--json"],
                         check=True, capture_output=True, text=True, env=env).stdout
    rec = json.loads(out)
    assert rec["image"] == str(image) and (rec["h"], rec["w"]) == (32, 40)
    assert len(rec["raw_map"]) == 32 * 40 and len(rec["input_sha256"]) == 64
