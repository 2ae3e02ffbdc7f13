"""The verdict threshold, from the image scores of normal images only.

A PLC acts on `verdict` (score >= threshold), so the threshold sets the
false-alarm rate the line will see. It is chosen from normal images alone
(never from labelled defects) for a target false-alarm rate
FALSE_ALARM_TARGET.

Rule ("gumbel"): an image score is the maximum of a blurred anomaly map,
and maxima of many weakly dependent values follow a Gumbel distribution
(extreme-value theory, Fisher-Tippett). Fit it to the normal scores by the
method of moments (beta = sd * sqrt(6) / pi, mu = mean - 0.5772 beta) and
put the threshold at its 1 - target quantile: mu - beta ln(-ln(1 - target)).
Every normal score informs the fit, so with the ~70 images held back from
training it is far steadier than an empirical 99.5% quantile, which is
in effect the largest one or two scores and moves with any single
unusual image. The empirical quantile is still recorded beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FALSE_ALARM_TARGET = 0.01  # of normal parts flagged, the design point of the threshold
EULER_GAMMA = 0.5772156649015329
RULE = "gumbel"


def gumbel_threshold(scores: Sequence[float], target: float = FALSE_ALARM_TARGET) -> float:
    """The 1 - target quantile of a Gumbel fitted to `scores` by moments."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size < 2:
        raise ValueError(f"a threshold needs at least 2 normal scores, got {s.size}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"false-alarm target must be in (0, 1), got {target}")
    beta = float(s.std(ddof=1)) * math.sqrt(6.0) / math.pi
    mu = float(s.mean()) - EULER_GAMMA * beta
    return mu - beta * math.log(-math.log(1.0 - target))


def threshold_info(scores: Sequence[float], source: str, target: float = FALSE_ALARM_TARGET) -> dict:
    """model.json's `threshold` object for these normal scores (see BUNDLE.md)."""
    s = np.asarray(scores, dtype=np.float64)
    value = gumbel_threshold(s, target)
    return {
        "value": value, "source": source, "rule": RULE, "false_alarm_target": target,
        "normal": value if source == "normal" else None, "normal_images": int(s.size),
        "normal_mean": float(s.mean()), "normal_std": float(s.std(ddof=1)),
        "normal_max": float(s.max()), "normal_q995": float(np.quantile(s, 0.995)),
        "f1_optimal": None,
    }
