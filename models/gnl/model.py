"""The GNL network: RD4AD reverse distillation plus a DeSTSeg segmentation head.

    image -> teacher (frozen) -> 3 levels T1, T2, T3 at strides 4, 8, 16
          -> bottleneck (RD4AD OCBE: MFF + OCE) -> embedding at stride 32
          -> student decoder -> S3, S2, S1 (same channels and strides as T)
    map   = sum_l up(1 - cos(T_l, S_l)) [+ sigmoid(segmentation(-T^ * S^))]
            [+ w * up(nearest-neighbour distance of (T2, T3) to a memory)]

References: Deng & Li, "Anomaly Detection via Reverse Distillation from
One-Class Embedding" (RD4AD, CVPR 2022: bottleneck, student decoder, cosine
map); Zhang et al., "DeSTSeg" (CVPR 2023, apple/ml-destseg model/destseg.py:
segmentation head on the negated product of normalised features, ASPP);
the optional memory of normal patches is gnl/memory.py (PatchCore-style).
`method="rd4ad"` is the same network without the segmentation head.

Export constraints (TFLite, see ../BUNDLE.md): cosine similarity uses an
explicit `x * rsqrt(sum(x*x) + eps)`, resizing is bilinear with
`align_corners=False`, and there is no `no_grad`/`normalize` inside the graph.
litert-torch 0.10 turns it into TFLite builtins only (ADD, CONCATENATION,
CONV_2D, DEPTHWISE_CONV_2D, LOGISTIC, MEAN, MUL, PAD, RESHAPE,
RESIZE_BILINEAR, RSQRT, SUB, SUM, TRANSPOSE_CONV).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnl.memory import Memory

METHODS: tuple[str, ...] = ("gnl", "rd4ad")
EPS = 1e-8
# Teachers built from bottleneck blocks; RD4AD mirrors them with bottleneck blocks too.
BOTTLENECK_BACKBONES: tuple[str, ...] = ("wide_resnet50_2", "resnet50-v2")


@dataclass(frozen=True)
class GNLConfig:
    """Architecture hyperparameters; stored in every checkpoint's `config`."""

    backbone: str = "efficientnet-lite0"
    method: str = "gnl"
    image_size: int = 256
    # DeSTSeg uses 256 at ResNet18. At 64x64 the head dominates the cost; on
    # this CPU 32 takes ~80 ms per image against ~250 ms for 64 (batch 1, eager).
    seg_width: int = 32
    teacher_weights: str | None = None
    # Inner width of the student decoder's residual blocks, as a multiple of
    # RD4AD's (which mirrors the teacher). Levels keep the teacher's channels,
    # so the maps, losses and the bundle's I/O do not change. 1 here so that
    # checkpoints from before the option load as they were trained; `gnl fit`
    # picks `default_student_width(backbone)`.
    student_width: int = 1
    # Descriptors in the memory of normal patches (gnl/memory.py); 0: none,
    # which is how checkpoints from before the option load.
    memory_size: int = 0
    # Principal axes the memory's descriptors are projected onto
    # (gnl/memory.py); 0: the full descriptor, as checkpoints from before.
    memory_dims: int = 0
    # Where the memory compares: 8 (every stride-8 location, as checkpoints
    # from before) or 16 (descriptors 2x2-averaged: a quarter of the cost).
    memory_stride: int = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the bottleneck's stride), got {self.image_size}")
        if not 1 <= self.student_width <= 8:
            raise ValueError(f"student_width must be 1..8 (a multiple of RD4AD's inner width), got {self.student_width}")
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0 (0: no memory), got {self.memory_size}")
        if self.memory_dims < 0:
            raise ValueError(f"memory_dims must be >= 0 (0: the full descriptor), got {self.memory_dims}")

    @property
    def seg_head(self) -> bool:
        """GNL has the DeSTSeg segmentation head; the RD4AD baseline does not."""
        return self.method == "gnl"

    def as_dict(self) -> dict[str, Any]:
        """Fields plus the derived `seg_head` flag (for model.json and readers)."""
        return {**asdict(self), "seg_head": self.seg_head}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GNLConfig:
        """Build from a checkpoint's config, ignoring training-only keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def default_student_width(backbone: str) -> int:
    """`gnl fit`'s student width for a teacher: 4 for EfficientNet-Lite, 1 (RD4AD's mirror) otherwise.

    Lite's levels are narrow (Lite0: 24/40/112 channels), so a mirrored
    student is small (0.64 M parameters) and holds too little of a line's
    normal variety: on MTD, width 4 (2.2 M) scored 85.1 against 82.7 in the
    same 75-minute budget (models/RESULTS.md, "A wider student"). The
    ResNets' levels (64-1024 channels) give RD4AD's students their width already.
    """
    return 4 if backbone.startswith("efficientnet-lite") else 1


def l2_normalize(x: Tensor) -> Tensor:
    """Unit vectors along channels: x * rsqrt(sum(x^2) + eps) (TFLite-friendly)."""
    return x * torch.rsqrt((x * x).sum(dim=1, keepdim=True) + EPS)


def cosine_distance(t: Tensor, s: Tensor) -> Tensor:
    """Per-pixel 1 - cos over channels of [B,C,H,W] maps -> [B,1,H,W] (RD4AD eq. 1)."""
    return 1.0 - (l2_normalize(t) * l2_normalize(s)).sum(dim=1, keepdim=True)


def _resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResBlock(nn.Module):
    """ResNet block (He et al. 2016), as RD4AD builds its bottleneck and student:
    basic (3x3, 3x3) or, with `bottleneck`, 1x1-3x3-1x1 (WideResNet50's block,
    which RD4AD uses for that teacher). `up=True` is RD4AD's de-block: the
    strided 3x3 becomes a 2x2 stride-2 transposed conv, on the shortcut too.
    `mid` is the inner width (default: cout, or cout // 2 for bottlenecks).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, up: bool = False, mid: int | None = None,
                 bottleneck: bool = False) -> None:
        super().__init__()
        mid = mid or (cout // 2 if bottleneck else cout)
        spatial_in = mid if bottleneck else cin
        spatial: nn.Module = (
            nn.ConvTranspose2d(spatial_in, mid, 2, stride=2, bias=False)
            if up
            else nn.Conv2d(spatial_in, mid, 3, stride, padding=1, bias=False)
        )
        layers: list[nn.Module] = []
        if bottleneck:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
        layers += [spatial, nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
        k = 1 if bottleneck else 3
        layers += [nn.Conv2d(mid, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if up:
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.BatchNorm2d(cout))
        elif stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class OneClassBottleneck(nn.Module):
    """RD4AD's OCBE: multi-scale feature fusion (strided convs bring levels 1
    and 2 to level 3's resolution, concatenation) then the one-class embedding
    (residual stage at stride 2 -> stride 32, 2 blocks as RD4AD's ResNet18)."""

    def __init__(self, channels: tuple[int, int, int], embed: int, bottleneck: bool) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.fuse1 = nn.Sequential(conv_bn_relu(c1, c2, stride=2), conv_bn_relu(c2, c3, stride=2))
        self.fuse2 = conv_bn_relu(c2, c3, stride=2)
        self.oce = nn.Sequential(ResBlock(3 * c3, embed, stride=2, mid=embed // 2, bottleneck=bottleneck),
                                 ResBlock(embed, embed, mid=embed // 2, bottleneck=bottleneck))

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.oce(torch.cat([self.fuse1(feats[0]), self.fuse2(feats[1]), feats[2]], dim=1))


class StudentDecoder(nn.Module):
    """RD4AD's student: the teacher mirrored, stride 32 -> 16 -> 8 -> 4.

    `width` multiplies each block's inner width (RD4AD's: the output channels,
    half of them in bottleneck blocks); the blocks' outputs keep the teacher's.
    """

    def __init__(self, embed: int, channels: tuple[int, int, int], bottleneck: bool, width: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = channels

        def stage(cin: int, cout: int) -> nn.Sequential:
            mid = width * (cout // 2 if bottleneck else cout)
            return nn.Sequential(ResBlock(cin, cout, up=True, mid=mid, bottleneck=bottleneck),
                                 ResBlock(cout, cout, mid=mid, bottleneck=bottleneck))

        self.up3, self.up2, self.up1 = stage(embed, c3), stage(c3, c2), stage(c2, c1)

    def forward(self, z: Tensor) -> list[Tensor]:
        s3 = self.up3(z)
        s2 = self.up2(s3)
        s1 = self.up1(s2)
        return [s1, s2, s3]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3, as DeSTSeg's head uses it):
    1x1, three dilated 3x3 branches, image pooling; 1x1 projection."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        branch1 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList([branch1] + [conv_bn_relu(cin, cout, dilation=r) for r in rates])
        # No BatchNorm on the 1x1 pooled map (torchvision has one): it fails in training at batch 1.
        self.pool = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Dropout(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = _resize(self.pool(x.mean(dim=(2, 3), keepdim=True)), x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class SegmentationNet(nn.Module):
    """DeSTSeg's segmentation net: 2 residual blocks, ASPP(6, 12, 18), 3x3, 1x1 -> logits."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.res = nn.Sequential(ResBlock(cin, width), ResBlock(width, width))
        self.head = nn.Sequential(ASPP(width, width), conv_bn_relu(width, width), nn.Conv2d(width, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.res(x))


def segmentation_input(teacher: list[Tensor], student: list[Tensor]) -> Tensor:
    """The segmentation head's input (DeSTSeg): -T^ * S^ per level, resized to
    the first level's size (stride 4) and concatenated."""
    size = teacher[0].shape[-2:]
    return torch.cat([_resize(-l2_normalize(t) * l2_normalize(s), size) for t, s in zip(teacher, student)], dim=1)


class Features(NamedTuple):
    """What training needs: per-level teacher and student maps (stride 4, 8, 16)
    and the segmentation logits at stride 4 (None without the head)."""

    teacher: list[Tensor]
    student: list[Tensor]
    seg_logits: Tensor | None


class GNL(nn.Module):
    """Frozen teacher, trainable bottleneck + student (+ segmentation head).

    `forward(x)` returns the anomaly map [B,1,h,w] at stride 4 described in
    ../BUNDLE.md; `features(x)` returns the intermediates for the losses.
    """

    def __init__(self, teacher: nn.Module, config: GNLConfig) -> None:
        super().__init__()
        self.config = config
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        channels: tuple[int, int, int] = tuple(teacher.channels)  # type: ignore[assignment]
        embed = 2 * channels[2]
        blocks = config.backbone in BOTTLENECK_BACKBONES
        self.bottleneck = OneClassBottleneck(channels, embed, blocks)
        self.student = StudentDecoder(embed, channels, blocks, config.student_width)
        self.segmentation = SegmentationNet(sum(channels), config.seg_width) if config.seg_head else None
        self.memory = (Memory(config.memory_size, channels[1] + channels[2], config.memory_dims, config.memory_stride)
                       if config.memory_size else None)

    def train(self, mode: bool = True) -> GNL:
        """Switch modes but keep the teacher in eval (its BatchNorm stays frozen)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def features(self, x: Tensor | None, seg: bool = True, teacher: list[Tensor] | None = None) -> Features:
        """Teacher and student maps; segmentation logits when `seg` and the head exist.

        `teacher` passes teacher maps computed earlier (training caches the
        frozen teacher's maps of the clean images); then `x` is not used.
        """
        t = list(self.teacher(x)) if teacher is None else teacher
        s = self.student(self.bottleneck(t))
        logits = None
        if seg and self.segmentation is not None:
            logits = self.segmentation(segmentation_input(t, s))
        return Features(t, s, logits)

    @staticmethod
    def distance_map(f: Features) -> Tensor:
        """Sum over levels of the per-pixel 1 - cos maps, at the first level's size."""
        size = f.teacher[0].shape[-2:]
        amap = _resize(cosine_distance(f.teacher[0], f.student[0]), size)
        for t, s in zip(f.teacher[1:], f.student[1:]):
            amap = amap + _resize(cosine_distance(t, s), size)
        return amap

    def trained_map(self, f: Features) -> Tensor:
        """The map without the memory: the distance map plus the segmentation probability."""
        amap = self.distance_map(f)
        if f.seg_logits is not None:
            amap = amap + torch.sigmoid(f.seg_logits)
        return amap

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        amap = self.trained_map(f)
        if self.memory is not None:
            amap = amap + _resize(self.memory(f.teacher[1], f.teacher[2]), amap.shape[-2:])
        return amap

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """state_dict without the teacher, which `build_model` rebuilds."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, Tensor], without_memory: bool = False) -> None:
        """Load a `trainable_state_dict`; any other missing or extra key is an
        error. `without_memory` loads all but the memory (which `gnl fit` then
        builds), ignoring a memory the state may hold."""
        if without_memory:
            state = {k: v for k, v in state.items() if not k.startswith("memory.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.") and not (without_memory and k.startswith("memory."))]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_model(config: GNLConfig) -> GNL:
    """A GNL with the pretrained teacher named by `config.backbone`."""
    from gnl.teacher import build_teacher

    return GNL(build_teacher(config.backbone, weights=config.teacher_weights, pretrained=True), config)


def load_checkpoint(path: str | Path) -> GNL:
    """Checkpoint written by `gnl fit` -> GNL in eval mode on the CPU (fp32).

    Format: {"config": GNLConfig.as_dict() + training hyperparameters,
    "state_dict": GNL.trainable_state_dict(), "epoch", "optimizer", "rng", ...}.
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = build_model(GNLConfig.from_dict(ckpt["config"]))
    model.load_trainable_state_dict(ckpt["state_dict"])
    return model.eval()
