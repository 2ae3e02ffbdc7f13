"""A small GNL-shaped network for export tests and the tiny test bundle.

It has the parts and ops of the real model (gnl/model.py) at a fraction of
the size: a conv "teacher" with three levels at stride 4, 8 and 16, a
bottleneck, a "student" decoder that mirrors those levels, a segmentation head
on teacher and student features, and the cosine-distance map summed over
levels at stride 4. Weights are random (seeded), so its maps mean nothing;
it exists so that export, the TFLite runtimes and the Go pipeline can be
tested against the same graph without a trained checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gnl import preprocess


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU6())


def _cos_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos over channels, with rsqrt normalisation as in gnl.model."""
    dot = (a * b).sum(1, keepdim=True)
    na = torch.rsqrt((a * a).sum(1, keepdim=True) + 1e-6)
    nb = torch.rsqrt((b * b).sum(1, keepdim=True) + 1e-6)
    return 1.0 - dot * na * nb


class StandIn(nn.Module):
    """GNL-shaped: forward(x NCHW normalised float) -> raw map [B,1,H/4,W/4]."""

    def __init__(self, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        w = width
        self.teacher = nn.ModuleList(
            [
                nn.Sequential(_block(3, w, 2), _block(w, w, 2)),  # stride 4
                _block(w, 2 * w, 2),  # stride 8
                _block(2 * w, 4 * w, 2),  # stride 16
            ]
        )
        # Input normalisation the "teacher" expects, as gnl.teacher.Teacher has.
        self.teacher.mean, self.teacher.std = preprocess.MEAN, preprocess.STD
        self.bottleneck = nn.Sequential(
            nn.Conv2d(4 * w, 4 * w, 3, 1, 2, dilation=2), nn.ReLU()
        )
        self.student = nn.ModuleList(
            [_block(2 * w, w, 1), _block(4 * w, 2 * w, 1), _block(4 * w, 4 * w, 1)]
        )
        self.seg_head = nn.Sequential(
            nn.Conv2d(2 * w, w, 3, 1, 1), nn.ReLU(), nn.Conv2d(w, 1, 1)
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        t = x
        for level in self.teacher:
            t = level(t)
            feats.append(t)
        s = self.bottleneck(feats[-1])
        s3 = self.student[2](s)
        s2 = self.student[1](
            F.interpolate(s3, scale_factor=2.0, mode="bilinear", align_corners=False)
        )
        s1 = self.student[0](
            F.interpolate(s2, scale_factor=2.0, mode="bilinear", align_corners=False)
        )
        size = feats[0].shape[-2:]
        cos = _cos_distance(feats[0], s1)
        cos = cos + F.interpolate(
            _cos_distance(feats[1], s2), size=size, mode="bilinear", align_corners=False
        )
        cos = cos + F.interpolate(
            _cos_distance(feats[2], s3), size=size, mode="bilinear", align_corners=False
        )
        seg = torch.sigmoid(self.seg_head(torch.cat([feats[0], s1], 1)))
        return cos + seg
