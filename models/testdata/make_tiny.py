"""Regenerate the tiny test bundles in models/testdata/ (committed, ~200 KB).

    tools/sidroot run bash -c 'PYTHONPATH=models python models/testdata/make_tiny.py'

tiny/        int8 of the stand-in net (tests/standin.py), teacher included
             (the export default keeps the teacher float): int8 input
tiny-float/  the same net in float32
future-op/   tiny's model.tflite with CONV_2D at op version 99, which no
             TFLite has: the runtime tests check the error names the op

Input 160x128 (W x H, deliberately not square, so that a swapped width and
height fails the tests), map 40x32. Calibration: 8 images from MTD
train/good. Weights are random with a fixed seed, so the maps are
meaningless but deterministic; the Go and Python tests only need a real
graph with gnld's input and output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from gnl.export import calibration_images, export_model  # noqa: E402
from standin import StandIn  # noqa: E402

MTD = Path(os.environ.get("MTD", HERE.parents[2] / "shared" / "data" / "mtd"))
CONFIG = {"data": "mtd", "method": "gnl", "backbone": "standin-random", "fingerprint": "",
          "images": 0, "epochs": 0, "seed": 0, "image_size": 128}


def main() -> None:
    calib = calibration_images(MTD / "train" / "good", 8)
    for name, quantize in (("tiny", True), ("tiny-float", False)):
        # tiny is int8 throughout, teacher included, so that its input is
        # int8 and the tests cover gnld's quantized-input path.
        out = export_model(StandIn(width=8, seed=0), HERE / name, calib, CONFIG,
                           quantize=quantize, size=(160, 128), float_modules=())
        print(out, (out / "model.tflite").stat().st_size, "bytes")
    future_op(HERE / "tiny" / "model.tflite", HERE / "future-op" / "model.tflite")


def future_op(src: Path, dst: Path) -> None:
    """Copy src with every CONV_2D op code bumped to version 99."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    for code in model.operatorCodes:
        if code.builtinCode == schema.BuiltinOperator.CONV_2D:
            code.version = 99
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(builder.Output())


if __name__ == "__main__":
    main()
