"""gnl.export: bundles that follow BUNDLE.md and run like the PyTorch model.

Uses the stand-in net (tests/standin.py: GNL's ops at a tiny size) so that
the test takes seconds; the real GNL goes through the same export_model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gnl.threshold import gumbel_threshold
import torch

from gnl import preprocess
from gnl.export import calibration_images, export_model
from gnl.tflite_runner import Runner
from standin import StandIn

MTD = Path(os.environ.get("MTD", Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"))
CONFIG = {"data": "mtd", "method": "gnl", "backbone": "standin", "fingerprint": "abc",
          "images": 759, "epochs": 3, "seed": 111, "image_size": 64}


@pytest.fixture(scope="module")
def calib() -> list[Path]:
    if not (MTD / "train" / "good").is_dir():
        pytest.skip(f"MTD not found at {MTD}; set MTD")
    return calibration_images(MTD / "train" / "good", 4)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, calib) -> dict[str, Path]:
    net = StandIn(width=4, seed=1)
    root = tmp_path_factory.mktemp("bundles")
    return {name: export_model(net, root / name, calib, CONFIG, quantize=(name == "int8"))
            for name in ("int8", "float")}


@pytest.mark.parametrize("kind", ["int8", "float"])
def test_bundle_follows_contract(bundles, kind: str) -> None:
    out = bundles[kind]
    meta = json.loads((out / "model.json").read_text())
    assert meta["format_version"] == 1
    assert meta["model_sha256"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert meta["version"].endswith(meta["model_sha256"][:8])
    i, o = meta["input"], meta["output"]
    assert (i["width"], i["height"], i["layout"], i["channel_order"]) == (64, 64, "NHWC", "RGB")
    assert (o["width"], o["height"], o["dtype"]) == (16, 16, "float32")
    assert i["dtype"] == "float32"  # the first op is the teacher's, which stays float
    assert i["quantization"]["scale"] == 0
    assert meta["quantization"] == ("int8-static-mixed" if kind == "int8" else "float32")
    assert meta["postprocess"] == {"resize": "linear", "blur_sigma": 4.0, "score": "max"}
    assert meta["threshold"]["value"] > 0 and meta["threshold"]["source"] == "calibration"
    assert meta["training"] == {"data": "mtd", "fingerprint": "abc", "images": 759, "epochs": 3,
                                "seed": 111, "image_size": 64}


def test_int8_has_per_channel_int8_weights(bundles) -> None:
    """Conv weights outside the teacher are int8 with one scale per output
    channel; the teacher and the head stay float."""
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(bundles["int8"] / "model.tflite")).get_tensor_details()
    per_channel = [t for t in tensors if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) > 1]
    net = StandIn(width=4, seed=1)
    teacher = set(net.teacher.modules())
    # A one-output-channel conv has a single scale, so it does not show here.
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m not in teacher and m.out_channels > 1]
    assert len(per_channel) == len(convs) > 0
    assert any(t["dtype"] == np.float32 for t in tensors)
    assert (bundles["int8"] / "model.tflite").stat().st_size < (bundles["float"] / "model.tflite").stat().st_size


@pytest.mark.parametrize("kind,tol", [("float", 1e-4), ("int8", 0.15)])
def test_tflite_matches_torch(bundles, calib, kind: str, tol: float) -> None:
    """The TFLite map is PyTorch's: to float rounding, or within int8 error."""
    net = StandIn(width=4, seed=1)
    runner = Runner(bundles[kind])
    for p in calib:
        bgr = preprocess.read_bgr(p)
        spec = preprocess.InputSpec(64, 64)
        with torch.no_grad():
            ref = net(torch.from_numpy(preprocess.to_tensor(bgr, spec))[None]).numpy()[0, 0]
        assert np.abs(runner.raw_map(bgr) - ref).max() < tol


def test_threshold_and_metrics_are_copied(tmp_path, calib) -> None:
    thr = {"value": 0.5, "source": "normal", "normal": 0.5, "normal_quantile": 0.995, "f1_optimal": None}
    metrics = {"float": {"clean": {"image_auroc": 0.9}}, "int8": {}}
    out = export_model(StandIn(width=4), tmp_path, calib, CONFIG, thr, metrics, quantize=False)
    meta = json.loads((out / "model.json").read_text())
    assert meta["threshold"] == thr and meta["metrics"] == metrics


def test_int8_needs_calibration(tmp_path) -> None:
    with pytest.raises(ValueError, match="calibration images"):
        export_model(StandIn(width=4), tmp_path, [], CONFIG)


def test_threshold_from_held_back_images_scored_by_the_exported_model(tmp_path, calib) -> None:
    """The threshold comes from the exported model's own scores (gnl.threshold's rule)."""
    held = calibration_images(MTD / "test" / "good", 5)
    out = export_model(StandIn(width=4), tmp_path, calib, CONFIG, quantize=False, threshold_images=held)
    meta = json.loads((out / "model.json").read_text())
    runner = Runner(out)
    scores = [runner.predict(preprocess.read_bgr(p))[1] for p in held]
    assert meta["threshold"]["source"] == "normal" and meta["threshold"]["normal_images"] == len(held)
    assert meta["threshold"]["value"] == pytest.approx(gumbel_threshold(scores), rel=1e-5)
    assert meta["threshold"]["rule"] == "gumbel" and meta["threshold"]["false_alarm_target"] == 0.01


def test_int8_teacher_quantizes_the_teacher_too(tmp_path, calib) -> None:
    """float_modules=() (`gnl export --int8-teacher`): every conv, the
    teacher's included, gets per-channel int8 weights."""
    from ai_edge_litert.interpreter import Interpreter

    net = StandIn(width=4, seed=1)
    out = export_model(net, tmp_path, calib, CONFIG, float_modules=())
    tensors = Interpreter(model_path=str(out / "model.tflite")).get_tensor_details()
    per_channel = [t for t in tensors if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) > 1]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1]
    assert len(per_channel) == len(convs) > 0


def test_fit_split_is_the_one_gnl_fit_used(tmp_path) -> None:
    """`gnl export --data` calibrates and thresholds on the images `gnl fit`
    chose: the same seeded hold-out, calibration from the training part."""
    from gnl.data import train_images
    from gnl.export import fit_split
    from gnl.holdout import EXPORT_CALIB_IMAGES, split_holdout

    if not (MTD / "train" / "good").is_dir():
        pytest.skip(f"MTD not found at {MTD}; set MTD")
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"config": {"seed": 7}}, ckpt)
    calib_paths, held = fit_split(MTD, ckpt)
    train, want_held = split_holdout(train_images(MTD), 7)
    assert held == want_held and len(held) >= 2
    assert len(calib_paths) == EXPORT_CALIB_IMAGES and set(calib_paths) <= set(train)
    assert not set(calib_paths) & set(held)


def test_resnet_v2_gnl_exports_a_bundle_that_runs(tmp_path, calib) -> None:
    """GNL on the ResNet50-v2 teacher (`gnl fit --backbone resnet50-v2`)
    becomes an int8 bundle that loads in ai_edge_litert and gives PyTorch's
    map; model.json carries the teacher's mean/std (the data batch norm folded in)."""
    from gnl.model import GNLConfig, build_model
    from gnl.teacher import RESNET_V2_WEIGHTS

    if not RESNET_V2_WEIGHTS.is_file():
        pytest.skip(f"ResNet50-v2 weights not at {RESNET_V2_WEIGHTS} (../shared/weights/resnet50-v2/)")
    torch.manual_seed(0)
    model = build_model(GNLConfig(backbone="resnet50-v2", image_size=64)).eval()
    out = export_model(model, tmp_path, calib[:2], {**CONFIG, "backbone": "resnet50-v2"})
    meta = json.loads((out / "model.json").read_text())
    assert meta["backbone"] == "resnet50-v2" and meta["quantization"] == "int8-static-mixed"
    assert meta["input"]["mean"] == list(model.teacher.mean) and meta["input"]["std"] == list(model.teacher.std)
    runner = Runner(out)
    for p in calib:
        bgr = preprocess.read_bgr(p)
        spec = preprocess.InputSpec(64, 64, mean=model.teacher.mean, std=model.teacher.std)
        with torch.no_grad():
            ref = model(torch.from_numpy(preprocess.to_tensor(bgr, spec))[None]).numpy()[0, 0]
        got = runner.raw_map(bgr)
        assert got.shape == ref.shape and np.abs(got - ref).max() < 0.15 * max(float(np.abs(ref).max()), 1.0)


def test_memory_stays_float_and_matches_torch(tmp_path, calib) -> None:
    """A GNL with a memory (more than one chunk of it) exports to an int8
    bundle whose map is PyTorch's within int8 error, the bank kept float, and
    model.json says the map holds the memory's distances."""
    from gnl.memory import CHUNK, descriptors
    from gnl.model import GNLConfig, build_model

    torch.manual_seed(0)
    size = CHUNK + 64
    model = build_model(GNLConfig(image_size=64, memory_size=size)).eval()
    spec = preprocess.InputSpec(64, 64, mean=model.teacher.mean, std=model.teacher.std)
    x = torch.from_numpy(np.stack([preprocess.to_tensor(preprocess.read_bgr(p), spec) for p in calib]))
    with torch.no_grad():
        t = model.teacher(x)
        d = descriptors(t[1], t[2]).flatten(2).transpose(1, 2).flatten(0, 1)
    bank = d[torch.randint(len(d), (size,))] + 0.05 * torch.randn(size, d.shape[1])
    model.memory.set_bank(bank)
    model.memory.weight.fill_(0.5)
    out = export_model(model, tmp_path, calib[:2], {**CONFIG, "backbone": "efficientnet-lite0", "memory_size": size})
    meta = json.loads((out / "model.json").read_text())
    assert "memory of normal" in meta["output"]["meaning"] and meta["quantization"] == "int8-static-mixed"
    assert meta["memory"] == {"size": size, "weight": 0.5}  # full width: not teachable (gnl/teachable.py)
    from ai_edge_litert.interpreter import Interpreter

    shapes = [tuple(t["shape"]) for t in Interpreter(model_path=str(out / "model.tflite")).get_tensor_details()
              if t["dtype"] == np.float32]
    assert (CHUNK, 1, 1, d.shape[1]) in shapes and (64, 1, 1, d.shape[1]) in shapes  # the bank, float
    runner = Runner(out)
    for p in calib:
        bgr = preprocess.read_bgr(p)
        with torch.no_grad():
            ref = model(torch.from_numpy(preprocess.to_tensor(bgr, spec))[None]).numpy()[0, 0]
            mem = (0.5 * model.memory.distance(*model.teacher(
                torch.from_numpy(preprocess.to_tensor(bgr, spec))[None])[1:])).numpy()
        got = runner.raw_map(bgr)
        assert float(mem.max()) > 0.1  # the memory adds to the map
        assert got.shape == ref.shape and np.abs(got - ref).max() < 0.15


def test_projected_memory_exports_and_matches_torch(tmp_path, calib) -> None:
    """A memory projected onto principal axes (gnl fit --memory-dims) exports
    as one more 1x1 convolution before the distances; model.json names its dims."""
    from gnl.memory import descriptors
    from gnl.model import GNLConfig, build_model

    torch.manual_seed(1)
    model = build_model(GNLConfig(image_size=64, memory_size=256, memory_dims=16)).eval()
    spec = preprocess.InputSpec(64, 64, mean=model.teacher.mean, std=model.teacher.std)
    x = torch.from_numpy(np.stack([preprocess.to_tensor(preprocess.read_bgr(p), spec) for p in calib]))
    with torch.no_grad():
        t = model.teacher(x)
        model.memory.fill(descriptors(t[1], t[2]).flatten(2).transpose(1, 2).flatten(0, 1), np.random.default_rng(0))
    model.memory.weight.fill_(0.5)
    config = {**CONFIG, "backbone": "efficientnet-lite0", "memory_size": 256, "memory_dims": 16}
    out = export_model(model, tmp_path, calib[:2], config)
    meta = json.loads((out / "model.json").read_text())
    teach = meta["memory"].pop("teach")
    assert meta["memory"] == {"size": 256, "dims": 16, "weight": 0.5}
    runner = Runner(out)
    for p in calib:
        bgr = preprocess.read_bgr(p)
        with torch.no_grad():
            ref = model(torch.from_numpy(preprocess.to_tensor(bgr, spec))[None]).numpy()[0, 0]
        got = runner.raw_map(bgr)
        assert got.shape == ref.shape and np.abs(got - ref).max() < 0.15
    assert_teachable(out, teach, model, spec, calib)


def assert_teachable(out, teach, model, spec, calib) -> None:
    """gnl/teachable.py: the bank lies at the offsets model.json names (filter
    2 b, bias -|b|^2, float32), and output 1 is the descriptors the memory
    compares, as PyTorch computes them."""
    from ai_edge_litert.interpreter import Interpreter

    raw = (out / "model.tflite").read_bytes()
    dims = teach["dims"]
    bank = []
    for c in teach["chunks"]:
        assert c["filter_offset"] % 16 == 0 and c["bias_offset"] % 16 == 0
        w = np.frombuffer(raw, np.float32, c["rows"] * dims, c["filter_offset"]).reshape(c["rows"], dims)
        bias = np.frombuffer(raw, np.float32, c["rows"], c["bias_offset"])
        assert np.allclose(bias, -((w / 2) ** 2).sum(1), rtol=1e-5)
        bank.append(w / 2)
    assert np.allclose(np.concatenate(bank), model.memory.bank.numpy(), rtol=1e-6, atol=1e-7)
    interp = Interpreter(model_path=str(out / "model.tflite"))
    interp.allocate_tensors()
    outs = interp.get_output_details()
    assert len(outs) == 2 and tuple(outs[teach["output"]]["shape"]) == (1, teach["height"], teach["width"], dims)
    x = preprocess.to_tensor(preprocess.read_bgr(calib[0]), spec)
    assert interp.get_input_details()[0]["dtype"] == np.float32
    interp.set_tensor(interp.get_input_details()[0]["index"], np.ascontiguousarray(x.transpose(1, 2, 0)[None]))
    interp.invoke()
    got = interp.get_tensor(outs[teach["output"]]["index"])[0]
    with torch.no_grad():
        t = model.teacher(torch.from_numpy(x)[None])
        q = model.memory.frame(model.memory.describe(t[1], t[2]))[0][0].permute(1, 2, 0).numpy()
    assert np.abs(got - q).max() < 1e-3 * max(1.0, float(np.abs(q).max()))
