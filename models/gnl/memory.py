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

With `stride` 16 the descriptors are 2x2 average-pooled first (candidates
and queries alike), so that the memory compares a quarter of the
locations. With `dims` > 0 the descriptors are then projected onto their `dims`
principal axes, fit on the normal candidates (PCA: no label, no anomaly), and
both the greedy pick and the distances run in that space: the memory's cost
per location is size x dims multiply-adds instead of size x channels, and a
smaller bank holds the same variety (models/RESULTS.md, "The memory: what it
costs and what it keeps"). `dims` = 0 keeps the full descriptors, as
checkpoints from before the option.

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
STRIDES = (8, 16)  # where the memory compares: every stride-8 location, or 2x2-averaged ones


def descriptors(t8: Tensor, t16: Tensor) -> Tensor:
    """[B, C8 + C16, H/8, W/8]: both levels 3x3 average-pooled, stride 16 resized onto stride 8."""
    f8 = mean3x3(t8)
    f16 = F.interpolate(mean3x3(t16), size=f8.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([f8, f16], dim=1)


def mean3x3(x: Tensor) -> Tensor:
    """Each location's 3x3 neighbourhood mean, zeros beyond the border
    counted (avg_pool2d(x, 3, 1, 1)), written as a depthwise convolution:
    TFLite's GPU delegate gets AVERAGE_POOL_2D's padding wrong (on Mesa's
    rusticl its maps were 0.63 of their range off XNNPACK's, the whole
    memory's error), and reproduces a depthwise convolution."""
    c = x.shape[1]
    return F.conv2d(x, torch.full((c, 1, 3, 3), 1 / 9, dtype=x.dtype, device=x.device), padding=1, groups=c)


def describe(t8: Tensor, t16: Tensor, stride: int = 8) -> Tensor:
    """`descriptors` at a memory's stride: 2x2-averaged for stride 16."""
    x = descriptors(t8, t16)
    return x if stride == 8 else F.avg_pool2d(x, stride // 8)


class Memory(nn.Module):
    """Nearest-neighbour distance map of the teacher's descriptors to a bank.

    `bank` [size, dims or channels] and `weight` are buffers: they travel in
    the state dict, so a checkpoint carries its memory. With `dims`, so do
    the projection: `center` [channels], `projection` [dims, channels] (the
    principal axes divided by `scale`, the candidates' RMS spread around
    `center` in that space), and the bank is stored projected.
    """

    def __init__(self, size: int, channels: int, dims: int = 0, stride: int = 8) -> None:
        super().__init__()
        if not 0 <= dims <= channels:
            raise ValueError(f"memory dims must be 0 (no projection) .. {channels} (the descriptor's channels), "
                             f"got {dims}")
        if stride not in STRIDES:
            raise ValueError(f"memory stride must be one of {STRIDES}, got {stride}")
        self.dims, self.stride = dims, stride
        self.register_buffer("bank", torch.zeros(size, dims or channels))
        self.register_buffer("weight", torch.zeros(()))
        if dims:
            self.register_buffer("center", torch.zeros(channels))
            self.register_buffer("projection", torch.zeros(dims, channels))
            self.register_buffer("scale", torch.ones(()))

    def set_bank(self, bank: Tensor) -> None:
        if bank.shape != self.bank.shape:
            raise ValueError(f"bank shape {tuple(bank.shape)} != {tuple(self.bank.shape)}")
        self.bank.copy_(bank)

    def fill(self, candidates: Tensor, rng: np.random.Generator) -> None:
        """Fit the projection (with `dims`) on the normal `candidates` [n,
        channels], then keep `size` of them, projected, by greedy k-centre."""
        x = candidates
        if self.dims:
            center, projection, scale = principal_axes(candidates, self.dims)
            self.center.copy_(center)
            self.projection.copy_(projection)
            self.scale.fill_(scale)
            x = project(candidates, center, projection)
        self.set_bank(x[coreset(x, self.bank.shape[0], rng)])

    def describe(self, t8: Tensor, t16: Tensor) -> Tensor:
        """[B, channels, H/stride, W/stride]: the descriptors the memory compares."""
        return describe(t8, t16, self.stride)

    def frame(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(queries [B, D, h, w], bank [size, D], scale) for descriptors x
        [B, channels, h, w]: both in a frame where the dot products are of
        order 1, and the factor back to descriptor units. In fp16 (the GPU
        delegate) raw descriptors overflow and |q|^2 - 2 q.b + |b|^2 loses
        every digit, so the frame is centred and divided by the spread,
        constants of the graph: the bank's own for a full-width memory, the
        projection's otherwise (which folds into one 1x1 convolution).
        """
        if self.dims:
            bias = -(self.projection @ self.center)
            return F.conv2d(x, self.projection[:, :, None, None], bias), self.bank, self.scale
        center = self.bank.mean(0)
        spread = torch.sqrt(((self.bank - center) ** 2).sum(1).mean()).clamp_min(1e-12)
        return (x - center[None, :, None, None]) / spread, (self.bank - center) / spread, spread

    def distance(self, t8: Tensor, t16: Tensor) -> Tensor:
        """[B, 1, H/stride, W/stride] L2 distance of each location to its nearest bank descriptor (unweighted)."""
        return self.nearest(self.describe(t8, t16))

    def nearest(self, x: Tensor) -> Tensor:
        """`distance` for descriptors x [B, channels, h, w] (`describe`) computed already."""
        q, bank, scale = self.frame(x)
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
        return scale * torch.sqrt(torch.relu((q * q).sum(dim=1, keepdim=True) - best))  # type: ignore[operator]

    def forward(self, t8: Tensor, t16: Tensor) -> Tensor:
        return self.weight * self.distance(t8, t16)


def principal_axes(x: Tensor, dims: int, batch: int = 1 << 18) -> tuple[Tensor, Tensor, float]:
    """(center [C], projection [dims, C], scale) of rows x [n, C]: the mean,
    the `dims` principal axes (eigenvectors of the covariance with the
    largest eigenvalues) divided by `scale`, the RMS distance of the
    projected rows from the centre. Accumulated in float64, `batch` rows at
    a time, so that 1.4 M rows of 152 need no copy of x."""
    n, c = x.shape
    center = sum(x[i:i + batch].double().sum(0) for i in range(0, n, batch)) / n
    cov = torch.zeros(c, c, dtype=torch.float64)
    for i in range(0, n, batch):
        d = x[i:i + batch].double() - center
        cov += d.T @ d
    values, vectors = torch.linalg.eigh(cov / n)  # ascending
    axes = vectors[:, -dims:].flip(1).T  # [dims, C], largest first
    scale = float(torch.sqrt(values[-dims:].clamp_min(0).sum()).clamp_min(1e-12))
    return center.float(), (axes / scale).float(), scale


def project(x: Tensor, center: Tensor, projection: Tensor, batch: int = 1 << 18) -> Tensor:
    """Rows x [n, C] in the projected frame [n, dims]."""
    return torch.cat([(x[i:i + batch] - center) @ projection.T for i in range(0, x.shape[0], batch)])


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
