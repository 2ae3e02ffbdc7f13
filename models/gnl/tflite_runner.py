"""Run a bundle's model.tflite in Python, the way gnld runs it in Go.

    python -m gnl.tflite_runner BUNDLE IMAGE... --json

prints one JSON object per image with the raw map (h x w, float32, as a flat
list) the score and the SHA-256 of the input tensor's bytes, for the Go parity
tests (pipeline/parity_test.go).
Preprocessing and post-processing are gnl.preprocess, i.e. BUNDLE.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from gnl import preprocess


def spec_from_meta(meta: dict) -> preprocess.InputSpec:
    """model.json's `input` -> InputSpec."""
    i = meta["input"]
    q = i.get("quantization", {})
    return preprocess.InputSpec(
        width=int(i["width"]), height=int(i["height"]), channel_order=i["channel_order"],
        mean=tuple(i["mean"]), std=tuple(i["std"]), dtype=i["dtype"],
        scale=float(q.get("scale", 0.0)), zero_point=int(q.get("zero_point", 0)),
    )


class Runner:
    """One TFLite interpreter for one bundle. Not thread-safe (like gnld's)."""

    def __init__(self, bundle_dir: str | Path, num_threads: int = 1) -> None:
        bundle_dir = Path(bundle_dir)
        self.meta = json.loads((bundle_dir / "model.json").read_text())
        self._init(bundle_dir / self.meta["model_file"], spec_from_meta(self.meta),
                   float(self.meta["postprocess"]["blur_sigma"]), num_threads)

    @classmethod
    def from_model(cls, model_path: str | Path, spec: preprocess.InputSpec,
                   blur_sigma: float = preprocess.BLUR_SIGMA, num_threads: int = 1) -> Runner:
        """A runner for a bare .tflite (used by export before model.json exists)."""
        runner = cls.__new__(cls)
        runner.meta = {}
        runner._init(Path(model_path), spec, blur_sigma, num_threads)
        return runner

    def _init(self, model_path: Path, spec: preprocess.InputSpec, blur_sigma: float, num_threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.spec, self.blur_sigma = spec, blur_sigma
        self.interp = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self.interp.allocate_tensors()
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        if np.dtype(self._in["dtype"]).name != spec.dtype:
            raise ValueError(f"{model_path}: input is {np.dtype(self._in['dtype']).name}, "
                             f"model.json says {spec.dtype}; re-export the bundle")

    def raw_map(self, bgr: np.ndarray) -> np.ndarray:
        """8-bit BGR frame -> the model's map (h x w float32, dequantized)."""
        self.interp.set_tensor(self._in["index"], preprocess.to_input(bgr, self.spec))
        self.interp.invoke()
        out = self.interp.get_tensor(self._out["index"])
        scale, zero_point = self._out["quantization"]
        m = out.astype(np.float32)
        if out.dtype != np.float32:
            m = (m - zero_point) * np.float32(scale)
        return m.reshape(out.shape[1], out.shape[2])

    def predict(self, bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """8-bit BGR frame -> (blurred map at input size, image score)."""
        return preprocess.postprocess(self.raw_map(bgr), self.spec, self.blur_sigma)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gnl.tflite_runner", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="print the full raw map as JSON lines")
    args = parser.parse_args(argv)
    runner = Runner(args.bundle)
    for path in args.images:
        bgr = preprocess.read_bgr(path)
        raw = runner.raw_map(bgr)
        tensor = preprocess.to_input(bgr, runner.spec)
        _, score = preprocess.postprocess(raw, runner.spec, runner.blur_sigma)
        rec = {"image": str(path), "h": raw.shape[0], "w": raw.shape[1], "score": score,
               "min": float(raw.min()), "max": float(raw.max()), "mean": float(raw.mean()),
               "input_sha256": hashlib.sha256(tensor.tobytes()).hexdigest()}
        if args.json:
            rec["raw_map"] = raw.ravel().tolist()
            print(json.dumps(rec))
        else:
            print(f"{path}: score {score:.6f} map {raw.shape} min {rec['min']:.6f} max {rec['max']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
