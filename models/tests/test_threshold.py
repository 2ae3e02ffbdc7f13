"""The normal-only threshold rule (gnl/threshold.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gnl.threshold import gumbel_threshold, threshold_info


def test_gumbel_threshold_finds_the_tail_quantile_of_gumbel_scores() -> None:
    mu, beta = 2.0, 0.1
    rng = np.random.default_rng(0)
    true_q99 = mu - beta * math.log(-math.log(0.99))
    estimates = [gumbel_threshold(rng.gumbel(mu, beta, size=70)) for _ in range(200)]
    assert abs(np.median(estimates) - true_q99) < 0.02
    # Steadier than the empirical 99.5% quantile of the same small samples.
    rng = np.random.default_rng(1)
    samples = [rng.gumbel(mu, beta, size=70) for _ in range(200)]
    spread_rule = np.std([gumbel_threshold(s) for s in samples])
    spread_quantile = np.std([np.quantile(s, 0.995) for s in samples])
    assert spread_rule < 0.7 * spread_quantile


def test_threshold_info_records_the_rule_and_the_sample() -> None:
    info = threshold_info([1.0, 1.1, 1.2, 1.05], "normal")
    assert info["rule"] == "gumbel" and info["source"] == "normal" and info["normal"] == info["value"]
    assert info["normal_images"] == 4 and info["normal_max"] == 1.2 and info["value"] > 1.2


def test_too_few_scores_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        gumbel_threshold([1.0])
    with pytest.raises(ValueError, match="target"):
        gumbel_threshold([1.0, 2.0], target=1.5)
