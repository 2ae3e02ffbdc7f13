"""A memory of normal patches beside the GNL map (PatchCore-style, frozen teacher).

The trained student reproduces the teacher only as far as its weights hold a
line's normal variety; on MTD that is not far enough (models/RESULTS.md:
the teacher's own nearest-neighbour distances score higher than the trained
map). The memory keeps that variety as data instead: descriptors of the
teacher's stride-8 and stride-16 levels (each 3x3 average-pooled, the coarser
one resized onto the finer grid and concatenated: PatchCore, Roth et al.,
CVPR 2022) of the training images, clean and through stage 1's augmentation
(augment.py), so that light, noise and rotation seen in training are normal
to it as they are to the student. A seeded random subset of `size` of them is
kept.

Its map is each location's distance to the nearest kept descriptor, scaled
by `weight` and added to the GNL map at stride 4. `weight` is set from the
held-back normal images only: the spread (standard deviation) of the GNL
map's image scores over that of the memory's, so that each branch moves the
score as much on normal images.

The distances run as 1x1 convolutions over chunks of the bank, each followed
by a max over the chunk: min |q - b|^2 = |q|^2 - max(2 q.b - |b|^2). The
bank stays float in an int8 bundle (export.FLOAT_MODULES): |q - b|^2 is a
small difference of large terms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK = 4096  # bank descriptors per 1x1 convolution: [1, 32, 32, 4096] float = 16 MB at 256 px
VIEWS = 1  # augmented views of each training image added to the candidates


def descriptors(t8: Tensor, t16: Tensor) -> Tensor:
    """[B, C8 + C16, H/8, W/8]: both levels 3x3 average-pooled, stride 16 resized onto stride 8."""
    f8 = F.avg_pool2d(t8, 3, 1, 1)
    f16 = F.interpolate(F.avg_pool2d(t16, 3, 1, 1), size=f8.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([f8, f16], dim=1)


class Memory(nn.Module):
    """Nearest-neighbour distance map of the teacher's descriptors to a bank.

    `bank` [size, C] and `weight` are buffers: they travel in the state dict,
    so a checkpoint carries its memory.
    """

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(size, channels))
        self.register_buffer("weight", torch.zeros(()))

    def set_bank(self, bank: Tensor) -> None:
        if bank.shape != self.bank.shape:
            raise ValueError(f"bank shape {tuple(bank.shape)} != {tuple(self.bank.shape)}")
        self.bank.copy_(bank)

    def distance(self, t8: Tensor, t16: Tensor) -> Tensor:
        """[B, 1, H/8, W/8] L2 distance of each location to its nearest bank descriptor (unweighted).

        Queries and bank are first centred on the bank's mean and divided by
        its RMS spread (both constants of the graph), so that the dot
        products are of order 1: in fp16 (the GPU delegate) raw descriptors
        overflow and |q|^2 - 2 q.b + |b|^2 loses every digit.
        """
        center = self.bank.mean(0)
        spread = torch.sqrt(((self.bank - center) ** 2).sum(1).mean()).clamp_min(1e-12)
        q = (descriptors(t8, t16) - center[None, :, None, None]) / spread
        bank = (self.bank - center) / spread
        b_, _, h, w = q.shape
        best = None
        for i in range(0, bank.shape[0], CHUNK):
            b = bank[i:i + CHUNK]
            score = F.conv2d(q, 2 * b[:, :, None, None], -(b * b).sum(1))  # 2 q.b - |b|^2
            # The max over the chunk as a max pool over a [H*W, chunk] plane:
            # XNNPACK runs MAX_POOL_2D, TFLite 2.14's has no REDUCE_MAX.
            plane = score.permute(0, 2, 3, 1).reshape(b_, 1, h * w, b.shape[0])
            m = F.max_pool2d(plane, (1, b.shape[0])).reshape(b_, 1, h, w)
            best = m if best is None else torch.maximum(best, m)
        return spread * torch.sqrt(torch.relu((q * q).sum(dim=1, keepdim=True) - best))  # type: ignore[operator]

    def forward(self, t8: Tensor, t16: Tensor) -> Tensor:
        return self.weight * self.distance(t8, t16)


def balance_weight(main_scores: np.ndarray, memory_scores: np.ndarray) -> float:
    """std(main) / std(memory) over the held-back normal images' image scores."""
    spread = float(np.std(memory_scores))
    if not spread > 0:
        raise ValueError("the memory's image scores do not vary over the held-back normal images")
    return float(np.std(main_scores)) / spread
