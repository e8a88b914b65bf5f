"""Intervals and verdicts: a clear difference wins, noise ties, the same numbers always give the same interval."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stats


def rounds(center: float, spread: float, n: int = 21, seed: int = 1) -> list[float]:
    return list(center * (1 + spread * np.random.default_rng(seed).standard_normal(n)))


def test_median_interval_holds_the_median_and_repeats():
    x = rounds(1e-3, 0.05)
    median, low, high = stats.median_ci(x)
    assert low <= median <= high and median == pytest.approx(float(np.median(x)))
    assert stats.median_ci(x) == (median, low, high)  # fixed seed
    assert stats.median_ci([2.0]) == (2.0, 2.0, 2.0)


def test_a_clear_difference_wins_and_noise_ties():
    base = rounds(1e-3, 0.02, seed=1)
    clear = stats.decide({"fast": base, "slow": [t * 1.3 for t in rounds(1e-3, 0.02, seed=2)]})
    assert clear.best == "fast" and clear.verdict == "winner" and clear.tied_with == []
    assert clear.ratios["slow"][1] > stats.TIE_MARGIN
    noise = stats.decide({"a": base, "b": rounds(1e-3, 0.02, seed=3), "c": [t * 2 for t in base]})
    assert noise.verdict == "tie" and noise.tied_with == [{"a", "b"}.difference({noise.best}).pop()]
    assert "c" not in noise.tied_with and noise.runner_up in ("a", "b")


def test_a_small_but_sure_difference_is_still_a_tie():
    """3% slower in every round: significant, but under the 5% a rerun on another day would not keep."""
    base = rounds(1e-3, 0.001)
    verdict = stats.decide({"a": base, "b": [t * 1.03 for t in base]})
    _, low, high = verdict.ratios["b"]
    assert 1 < low <= high < stats.TIE_MARGIN and verdict.verdict == "tie"


def test_paired_rounds_cancel_a_shared_slowdown():
    """A slow moment that hits both contenders of a round alike does not blur their ratio."""
    load = np.concatenate([np.ones(10), 5 * np.ones(11)])  # the machine slows down 5× halfway through
    a, b = list(1e-3 * load), list(1.2e-3 * load)
    _, low, high = stats.paired_ratio(b, a)
    assert low == pytest.approx(1.2) and high == pytest.approx(1.2)
    _, low_unpaired, high_unpaired = stats.ratio_of_medians(b, a)
    assert high_unpaired - low_unpaired > 1  # unpaired, the slowdown swamps the difference


def test_significance():
    assert stats.significant((1.3, 1.2, 1.4)) and stats.significant((0.7, 0.6, 0.8))
    assert not stats.significant((1.02, 0.97, 1.08))
