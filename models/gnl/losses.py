"""GNL losses.

Stage 1 (student + bottleneck), per teacher level, summed over levels:
  hard distillation      = global 1 - cos of the flattened maps (RD4AD, Deng &
                           Li 2022) + mean of each image's top-k per-pixel
                           1 - cos (the hardest locations);
  structure distillation = per channel KL(softmax_HW(T) || softmax_HW(S)),
                           i.e. the spatial distribution of each channel
                           (channel-wise distillation, Shu et al. 2021).
Stage 2 (segmentation head): focal loss (gamma = 4) + L1 on the probability,
as DeSTSeg (apple/ml-destseg model/losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gnl.model import cosine_distance

TOP_K = 10
FOCAL_GAMMA = 4.0


def global_cosine_loss(t: Tensor, s: Tensor) -> Tensor:
    """RD4AD's loss: mean over the batch of 1 - cos(flatten(T), flatten(S))."""
    tf, sf = t.flatten(1), s.flatten(1)
    cos = (tf * sf).sum(1) * torch.rsqrt((tf * tf).sum(1) * (sf * sf).sum(1) + 1e-12)
    return (1.0 - cos).mean()


def topk_cosine_loss(t: Tensor, s: Tensor, k: int = TOP_K) -> Tensor:
    """Mean over the batch of the mean of each image's k largest per-pixel 1 - cos."""
    d = cosine_distance(t, s).flatten(1)
    return d.topk(min(k, d.shape[1]), dim=1).values.mean()


def structure_loss(t: Tensor, s: Tensor) -> Tensor:
    """Mean over batch and channels of KL(softmax_HW(T) || softmax_HW(S))."""
    log_pt = F.log_softmax(t.flatten(2), dim=-1)
    log_ps = F.log_softmax(s.flatten(2), dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


def distillation_loss(teacher: list[Tensor], student: list[Tensor], k: int = TOP_K,
                      plain: bool = False) -> tuple[Tensor, dict[str, float]]:
    """Stage-1 loss summed over levels, and its parts (for logging).

    `plain` is the RD4AD baseline: the global 1-cos term alone (the other
    parts are still reported, so both methods log the same numbers).
    """
    parts = {"global": torch.zeros(()), "topk": torch.zeros(()), "structure": torch.zeros(())}
    for t, s in zip(teacher, student):
        t = t.detach()
        parts["global"] = parts["global"] + global_cosine_loss(t, s)
        parts["topk"] = parts["topk"] + topk_cosine_loss(t, s, k)
        parts["structure"] = parts["structure"] + structure_loss(t, s)
    total = parts["global"] if plain else parts["global"] + parts["topk"] + parts["structure"]
    return total, {name: float(v.detach()) for name, v in parts.items()}


def focal_loss(logits: Tensor, mask: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Binary focal loss (Lin et al. 2017) on logits, alpha off, mean over pixels."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    p_t = p * mask + (1 - p) * (1 - mask)
    return (ce * (1 - p_t) ** gamma).mean()


def segmentation_loss(logits: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Stage-2 loss: focal + L1(sigmoid(logits), mask), DeSTSeg's sum."""
    focal = focal_loss(logits, mask)
    l1 = (torch.sigmoid(logits) - mask).abs().mean()
    return focal + l1, {"focal": float(focal.detach()), "l1": float(l1.detach())}

