"""`gnl export`: a checkpoint -> a model bundle (model.tflite + model.json).

    gnl export --checkpoint CKPT --out DIR (--data DIR | --calib DIR [--calib-count N] | --float)
               [--int8-teacher]

`--data` re-exports a checkpoint exactly as `gnl fit` exported it: int8
calibration on 32 of its training images, the threshold from the held-back
normal images (the same seeded split).

The bundle follows ../BUNDLE.md. The graph is the whole of `GNL.forward`
behind an NHWC wrapper: image [1,H,W,3] in, anomaly map [1,h,w,1] out.

Quantization (default): post-training static int8 through PT2E
(litert-torch's PT2EQuantizer). The trained parts (bottleneck, student,
segmentation head: convs, ReLU, pools) get per-channel int8 weights and int8
activations, calibrated on normal images and on the same images with a
synthetic anomaly (gnl.synth) so that the activation ranges cover defects.
Two parts stay float:
- the frozen teacher (unless `--int8-teacher`): int8 error piles up in its
  depthwise convs. Measured on the default bundle through gnld with
  XNNPACK (models/RESULTS.md, "float vs int8 teacher"); on TFLite's builtin
  kernels int8 depthwise is also 4x slower than float;
- the memory of normal patches (gnl/memory.py), if the model has one: its
  distances are small differences of large dot products;
- the map head written directly in `GNL.forward` (rsqrt-normalised cosine,
  sums, resizes, sigmoid): quantizing it trips the converter's same-scale
  constraint on `tfl.reshape`, and float keeps the map's fine differences.
Input and output are float32, so the map never saturates. Should the
converter fold a QUANTIZE into the input, model.json carries its scale and
zero point and both runtimes quantize through the lookup table (BUNDLE.md
step 5), which is exactly what the folded op did.

Every bundle must load in TensorFlow Lite 2.14 (Debian's C API, which gnld
links); `tests/test_export.py` and the Go tests check that.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from gnl import policy, preprocess, teachable, threshold

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAP_MEANING = (
    "sum over 3 teacher levels of 1-cos(teacher, student) + segmentation probability, "
    "at stride 4; higher = more anomalous"
)
MAP_MEANING_MEMORY = (
    "sum over 3 teacher levels of 1-cos(teacher, student) + segmentation probability "
    "+ weighted distance of the teacher's patches to a memory of normal ones, "
    "at stride 4; higher = more anomalous"
)


class NHWC(nn.Module):
    """image [1,H,W,3] normalised float -> map [1,h,w,1]: the deployed graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# Submodules of the model that stay float in an int8 export (see module doc).
FLOAT_MODULES: tuple[str, ...] = ("teacher", "memory")


def _quantized(node: torch.fx.Node, float_modules: tuple[str, ...]) -> bool:
    """True for the ops that run int8: those inside submodules other than
    `float_modules`. The map head written directly in the model's forward
    stays float (see module doc).

    Module paths in the exported graph are relative to the NHWC wrapper:
    "model" is the network itself, "model.teacher..." its submodules. Nodes
    without a module stack (weights, constants) are left to the annotators.
    """
    stack = node.meta.get("nn_module_stack")
    if node.op != "call_function" or not stack:
        return True
    path = list(stack.values())[-1][0]
    return "." in path and path.split(".")[1] not in float_modules


def _quantizer(float_modules: tuple[str, ...]):
    """PT2EQuantizer that annotates only the ops `_quantized` picks."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

    class SubmoduleQuantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            self._annotate_all_static_patterns(model, self.global_config,
                                               lambda node: _quantized(node, float_modules))
            propagate_annotation(model)
            return model

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    return SubmoduleQuantizer().set_global(config)


def calibration_batches(paths: list[Path], spec: preprocess.InputSpec, seed: int = 0):
    """Yield [1,H,W,3] float inputs: each image, then it with a synthetic anomaly."""
    from gnl.synth import synthesize

    rng = np.random.default_rng(seed)
    float_spec = dataclasses.replace(spec, dtype="float32", scale=0.0, zero_point=0)
    for p in paths:
        bgr = cv2.resize(preprocess.read_bgr(p), (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        yield torch.from_numpy(preprocess.to_input(bgr, float_spec))
        defect, _ = synthesize(bgr, rng)
        yield torch.from_numpy(preprocess.to_input(defect, float_spec))


def convert(model: nn.Module, spec: preprocess.InputSpec, calib: list[Path],
            out: Path, quantize: bool = True, float_modules: tuple[str, ...] = FLOAT_MODULES) -> str:
    """Convert `model` (NCHW float -> map) to `out`; returns the quantization used."""
    import litert_torch

    net = NHWC(model.eval()).eval()
    example = (torch.zeros(1, spec.height, spec.width, 3),)
    if not quantize:
        litert_torch.convert(net, example).export(str(out))
        return "float32"
    if not calib:
        raise ValueError("int8 export needs calibration images (--calib DIR); use --float for a float model")
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _quantizer(float_modules)
    graph = prepare_pt2e(torch.export.export(net, example).module(), quantizer)
    with torch.no_grad():
        for x in calibration_batches(calib, spec):
            graph(x)
    graph = convert_pt2e(graph, fold_quantize=False)
    # The graph was captured from the model in eval mode (inference ops
    # only); exported GraphModules refuse .eval(), so clear the flag that
    # makes the converter warn about training mode.
    graph.training = False
    litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    return "int8-static-mixed"


def _tensor_json(detail: dict[str, Any]) -> tuple[str, dict[str, float | int]]:
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"]).name
    return dtype, {"scale": float(scale) if dtype != "float32" else 0.0,
                   "zero_point": int(zero_point) if dtype != "float32" else 0}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_scores(model_path: Path, spec: preprocess.InputSpec, images: list[Path] | list[np.ndarray]) -> list[float]:
    from gnl.tflite_runner import Runner

    runner = Runner.from_model(model_path, spec)
    return [runner.predict(preprocess.read_bgr(p) if isinstance(p, Path) else p)[1] for p in images]


def policy_views(paths: list[Path], size: tuple[int, int], drift_policy: str, seed: int) -> list[np.ndarray]:
    """The drift policy's views of the held-back images that the threshold
    also sees (gnl/policy.py): each resized to the model's input, as training
    saw it, then THRESHOLD_VIEWS views drawn from the threshold's stream."""
    count = policy.threshold_views(drift_policy)
    if not count:
        return []
    view = policy.view_fn(drift_policy)
    rng = np.random.default_rng([seed, policy.THRESHOLD_STREAM])
    images = [cv2.resize(preprocess.read_bgr(p), size, interpolation=cv2.INTER_LINEAR) for p in paths]
    return [view(im, rng) for im in images for _ in range(count)]


def _memory_json(model: nn.Module, teach: dict[str, Any] | None = None) -> dict[str, Any]:
    """model.json's "memory" (size, weight, dims when projected, stride when
    not 8, teach: where gnld teaches it, gnl/teachable.py) for a model with a
    memory of normal patches, else nothing."""
    memory = getattr(model, "memory", None)
    if memory is None:
        return {}
    out = {"size": int(memory.bank.shape[0]), "weight": float(memory.weight)}
    if memory.dims:
        out["dims"] = memory.dims
    if memory.stride != 8:
        out["stride"] = memory.stride
    if teach:
        out["teach"] = teach
    return {"memory": out}


def export_model(model: nn.Module, out_dir: str | Path, calib_images: list[Path], config: dict[str, Any],
                 threshold_info: dict | None = None, metrics: dict | None = None,
                 quantize: bool = True, size: tuple[int, int] | None = None,
                 threshold_images: list[Path] | None = None,
                 float_modules: tuple[str, ...] = FLOAT_MODULES) -> Path:
    """Write a bundle for an in-memory `model` (GNL-shaped: NCHW -> [B,1,h,w]).

    `config` is the checkpoint's config (backbone, data, fingerprint, images,
    epochs, seed, image_size); `size` (width, height) overrides image_size.
    Without `threshold_info` the threshold comes from the exported model's
    own scores (int8 scores differ from float ones) on `threshold_images`,
    normal images held back from training (source "normal"), or else on
    `calib_images` (source "calibration"), by gnl.threshold's rule.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    side = int(config.get("image_size", preprocess.IMAGE_SIZE))
    width, height = size or (side, side)
    # The teacher's own input normalisation (EfficientNet-Lite: (x-127)/128).
    spec = preprocess.InputSpec(width, height, mean=tuple(model.teacher.mean), std=tuple(model.teacher.std))
    model_path = out_dir / "model.tflite"
    quantization = convert(model, spec, calib_images, model_path, quantize, float_modules)
    memory = getattr(model, "memory", None)
    # A projected memory's descriptors become output 1, for gnld's teach
    # (gnl/teachable.py); a full-width one's frame is folded into its filters.
    teach = teachable.make_teachable(model_path, int(memory.bank.shape[0])) if memory is not None and memory.dims else None

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path))
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    in_dtype, in_quant = _tensor_json(inp)
    out_dtype, out_quant = _tensor_json(outp)
    spec = dataclasses.replace(spec, dtype=in_dtype, scale=in_quant["scale"], zero_point=in_quant["zero_point"])
    if tuple(inp["shape"]) != (1, height, width, 3):
        raise RuntimeError(f"{model_path}: input shape {inp['shape']}, want [1, {height}, {width}, 3]")
    out_h, out_w = int(outp["shape"][1]), int(outp["shape"][2])

    if threshold_info is None:
        held = bool(threshold_images)
        scores = _image_scores(model_path, spec, threshold_images if held else calib_images)
        if len(scores) < 2:
            raise ValueError(f"{len(scores)} normal image(s) to set the threshold from; give at least 2")
        name = config.get("drift_policy", policy.LEGACY)
        views = policy_views(threshold_images, (width, height), name, int(config.get("seed", 0))) if held else []
        in_views = _image_scores(model_path, spec, views)
        threshold_info = threshold.threshold_info(scores + in_views, "normal" if held else "calibration")
        threshold_info.update({"normal_images": len(scores), "policy": name, "policy_views": len(in_views),
                               "clean": threshold.gumbel_threshold(scores)})

    sha = _sha256(model_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": f"gnl-{config.get('data', 'mtd')}",
        "version": f"{datetime.date.today():%Y%m%d}-{sha[:8]}",
        "model_file": model_path.name,
        "model_sha256": sha,
        "method": config.get("method", "gnl"),
        "backbone": config.get("backbone", "unknown"),
        "input": {
            "width": width, "height": height, "layout": "NHWC", "channel_order": spec.channel_order,
            "resize": "linear", "mean": list(spec.mean), "std": list(spec.std),
            "dtype": in_dtype, "quantization": in_quant,
        },
        "output": {
            "name": "anomaly_map", "width": out_w, "height": out_h, "dtype": out_dtype,
            "quantization": out_quant, "meaning": MAP_MEANING_MEMORY if config.get("memory_size") else MAP_MEANING,
        },
        **_memory_json(model, teach),
        "drift_policy": policy.describe(config.get("drift_policy", policy.LEGACY)),
        "postprocess": {"resize": "linear", "blur_sigma": preprocess.BLUR_SIGMA, "score": "max"},
        "threshold": threshold_info,
        "training": {
            "data": config.get("data", "mtd"), "fingerprint": config.get("fingerprint", ""),
            "images": int(config.get("images", 0)), "epochs": int(config.get("epochs", 0)),
            "seed": int(config.get("seed", 0)), "image_size": side,
        },
        "quantization": quantization,
        "metrics": metrics or {"float": {}, "int8": {}},
    }
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def export_bundle(checkpoint_path: str | Path, out_dir: str | Path, calib_images: list[Path],
                  threshold_info: dict | None = None, metrics: dict | None = None,
                  quantize: bool = True, threshold_images: list[Path] | None = None,
                  float_modules: tuple[str, ...] = FLOAT_MODULES) -> Path:
    """Checkpoint written by `gnl fit` -> bundle folder `out_dir` (see BUNDLE.md)."""
    from gnl.model import load_checkpoint

    model = load_checkpoint(checkpoint_path)
    ckpt = torch.load(Path(checkpoint_path), map_location="cpu", weights_only=True)
    # model.json records the epochs actually trained, not the ones asked for.
    config = {**ckpt["config"], "epochs": int(ckpt.get("epoch", ckpt["config"].get("epochs", 0)))}
    return export_model(model, out_dir, calib_images, config, threshold_info, metrics, quantize,
                        threshold_images=threshold_images, float_modules=float_modules)


def calibration_images(folder: str | Path, count: int) -> list[Path]:
    """`count` images spread evenly over the sorted image files in `folder`."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no images (.jpg/.png/.bmp) for calibration; "
                                "pass --calib DATA/train/good")
    step = max(len(paths) / count, 1.0)
    return [paths[int(i * step)] for i in range(min(count, len(paths)))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint from `gnl fit`")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    parser.add_argument("--data", type=Path, help="the data folder the checkpoint was trained on: "
                        "calibrate and set the threshold as `gnl fit` does")
    parser.add_argument("--calib", type=Path, help="folder of normal images for int8 calibration "
                        "(e.g. DATA/train/good)")
    parser.add_argument("--calib-count", type=int, default=32,
                        help="calibration images (each also used with a synthetic anomaly)")
    parser.add_argument("--float", action="store_true", help="export float32 instead of int8")
    parser.add_argument("--int8-teacher", action="store_true",
                        help="quantize the frozen teacher too (default: it stays float)")
    parser.add_argument("--threshold-json", type=Path, help="JSON object for model.json's threshold")
    parser.add_argument("--metrics-json", type=Path, help="JSON object for model.json's metrics")


def fit_split(data: Path, checkpoint: Path) -> tuple[list[Path], list[Path]]:
    """(calibration images, held-back normal images) exactly as `gnl fit`
    chose them when it trained `checkpoint` on `data`."""
    from gnl.data import train_images
    from gnl.holdout import export_calibration, split_holdout

    seed = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["config"].get("seed", 0))
    train, held = split_holdout(train_images(data), seed)
    return export_calibration(train), held


def run(args: argparse.Namespace) -> int:
    if not args.float and args.calib is None and args.data is None:
        raise SystemExit("gnl export: int8 needs --data DIR (the training data) or --calib DIR "
                         "(normal images); or pass --float")
    held = None
    if args.data is not None:
        calib, held = fit_split(args.data, args.checkpoint)
    else:
        calib = calibration_images(args.calib, args.calib_count) if args.calib else []
    load = lambda p: json.loads(p.read_text()) if p else None  # noqa: E731
    out = export_bundle(args.checkpoint, args.out, calib, load(args.threshold_json),
                        load(args.metrics_json), quantize=not args.float, threshold_images=held,
                        float_modules=tuple(m for m in FLOAT_MODULES if m != "teacher") if args.int8_teacher else FLOAT_MODULES)
    meta = json.loads((out / "model.json").read_text())
    print(f"{out}: {meta['quantization']} {(out / 'model.tflite').stat().st_size} bytes, "
          f"threshold {meta['threshold']['value']:.4f}")
    return 0
