"""A memory of normal patches beside the GNL map (PatchCore-style, frozen teacher).

The trained student reproduces the teacher only as far as its weights hold a
line's normal variety; on MTD that is not far enough (models/RESULTS.md:
the teacher's own nearest-neighbour distances score higher than the trained
map). The memory keeps that variety as data instead: descriptors of the
teacher's stride-8 and stride-16 levels (each 3x3 average-pooled, the coarser
one resized onto the finer grid and concatenated: PatchCore, Roth et al.,
CVPR 2022) of the training images, clean and in VIEWS views through stage
1's augmentation (augment.py), so that light, noise and rotation seen in
training are normal to it as they are to the student. Of these candidates,
`size` are kept by greedy k-centre selection (`coreset`, as PatchCore),
which keeps the rare kinds of normal patch (a tile's edge, a rotation's
black corner) that a random pick drops.

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
from tqdm import tqdm

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


def coreset(x: Tensor, size: int, rng: np.random.Generator, batch: int = 256, pool: int = 4096) -> Tensor:
    """Indices of `size` rows of x [n, C] picked by greedy k-centre
    (PatchCore's coreset, Sener & Savarese, ICLR 2018): start from a random
    row, then always take the row farthest from all rows taken so far.

    A random pick keeps the common patches and drops the rare ones (a tile's
    edge, a rotation's black corner); the greedy pick covers every kind of
    normal patch with the same radius.

    Exact greedy needs a pass over all n rows per pick. This takes up to
    `batch` picks per pass and still makes exactly the greedy choice: the
    `pool` rows farthest from the taken set are updated among themselves
    after each pick, and a pick is made only while it is farther than the
    (pool+1)-th row, which no pick can make farther. The pass over all rows
    is one 1x1 convolution (oneDNN, every core) on x laid out channels-last,
    which is x's own memory: min_j |x - p_j|^2 = |x|^2 + min_j (|p_j|^2 - 2 x.p_j).
    A taken row is marked -1, so that no row is taken twice, even when
    rounding leaves it a tiny distance to itself and many rows are equal.
    """
    n = x.shape[0]
    if not 0 < size <= n:
        raise ValueError(f"coreset of {size} from {n} rows")
    x = x.float().contiguous()
    norms = (x * x).sum(1)
    plane = x[None, None].permute(0, 3, 1, 2)  # [1, C, 1, n], channels-last: no copy

    def nearest_of(rows: list[int]) -> Tensor:  # [n]: squared distance of every row to the nearest of `rows`
        p = x[rows]
        d = F.conv2d(plane, -2 * p[:, :, None, None], norms[rows])  # [1, len(rows), 1, n]
        return (norms + d[0, :, 0].amin(0)).clamp_min(0)

    taken = [int(rng.integers(n))]
    nearest = nearest_of(taken)
    nearest[taken] = -1.0
    progress = tqdm(total=size, initial=1, desc="coreset", disable=None, leave=False)
    while len(taken) < size:
        k = min(pool + 1, n)
        top, idx = torch.topk(nearest, k)
        bar = float(top[-1]) if k > pool else -1.0  # no row outside the pool is farther than this
        cand, cand_d = idx[:pool], top[:pool].clone()
        c, cn = x[cand], norms[cand]
        picks: list[int] = []
        while len(picks) < batch and len(taken) + len(picks) < size:
            j = int(torch.argmax(cand_d))
            if picks and float(cand_d[j]) < bar:
                break
            picks.append(int(cand[j]))
            cand_d = torch.minimum(cand_d, (cn + cn[j] - 2 * (c @ c[j])).clamp_min(0))
            cand_d[j] = -1.0
        taken += picks
        progress.update(len(picks))
        nearest = torch.minimum(nearest, nearest_of(picks))
        nearest[picks] = -1.0
    progress.close()
    return torch.tensor(taken)


def balance_weight(main_scores: np.ndarray, memory_scores: np.ndarray) -> float:
    """std(main) / std(memory) over the held-back normal images' image scores."""
    spread = float(np.std(memory_scores))
    if not spread > 0:
        raise ValueError("the memory's image scores do not vary over the held-back normal images")
    return float(np.std(main_scores)) / spread
