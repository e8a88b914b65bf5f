"""Statistics for noisy timings: bootstrap intervals of a median and of a ratio, and the verdict of a contest.

Every interval is a 95% percentile bootstrap with a fixed seed, so the same numbers always give the same interval.
A ratio is "slower / faster": above 1 the numerator is slower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

SEED = 0
RESAMPLES = 2000
CONFIDENCE = 0.95
# A contender ties with the best unless it is surely (its whole interval) more than this much slower: a difference
# smaller than 5% does not survive a rerun on a laptop or a shared VM, so it is no ground for a choice.
TIE_MARGIN = 1.05
# A strategy whose first timing is within this factor of the fastest is a contender: re-timed for the verdict.
CONTENDER_MARGIN = 1.5

Interval = tuple[float, float, float]  # (estimate, low, high)


def _quantiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def median_ci(samples: Sequence[float]) -> Interval:
    """The median of `samples` and the 95% bootstrap interval of it."""
    x = np.asarray(samples, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(SEED)
    medians = np.median(x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))], axis=1)
    return (float(np.median(x)), *_quantiles(medians))


def paired_ratio(slower: Sequence[float], faster: Sequence[float]) -> Interval:
    """Median of the per-round ratios slower[r] / faster[r] (rounds timed side by side) and its interval."""
    return median_ci(np.asarray(slower, dtype=float) / np.asarray(faster, dtype=float))


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> Interval:
    """median(numerator) / median(denominator) for two independent sets of rounds, with a bootstrap interval that
    resamples each set on its own."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(SEED)
    ma = np.median(a[rng.integers(0, len(a), size=(RESAMPLES, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), size=(RESAMPLES, len(b)))], axis=1)
    return (float(np.median(a) / np.median(b)), *_quantiles(ma / mb))


def significant(interval: Interval) -> bool:
    """The interval excludes 1: one side is surely faster."""
    _, low, high = interval
    return low > 1 or high < 1


@dataclass(frozen=True)
class Verdict:
    best: str
    verdict: str  # "winner" | "tie"
    tied_with: list[str] = field(default_factory=list)  # contenders not surely more than TIE_MARGIN slower
    ratios: dict[str, Interval] = field(default_factory=dict)  # contender -> its time / the best's

    @property
    def runner_up(self) -> str | None:
        """The first tied contender, else the closest one."""
        if self.tied_with:
            return self.tied_with[0]
        return min(self.ratios, key=lambda name: self.ratios[name][0]) if self.ratios else None


def is_contender(time_s: float, best_s: float) -> bool:
    """A strategy whose time is within CONTENDER_MARGIN of the fastest's may still win: it is re-timed."""
    return time_s <= CONTENDER_MARGIN * best_s


def verdict_of(best: str, ratios: Mapping[str, Interval]) -> Verdict:
    """The tie rule: a contender whose ratio interval reaches down to TIE_MARGIN ties with the best; with no tie,
    the best is the winner."""
    ratios = dict(ratios)
    tied = sorted((n for n, (_, low, _) in ratios.items() if low <= TIE_MARGIN), key=lambda n: ratios[n][0])
    return Verdict(best=best, verdict="tie" if tied else "winner", tied_with=tied, ratios=ratios)


def decide(round_times: Mapping[str, Sequence[float]]) -> Verdict:
    """The verdict of contenders timed in interleaved rounds (round r of every contender ran side by side): the best
    has the lowest median; every other contender gets the paired ratio to it (verdict_of applies the tie rule)."""
    medians = {name: float(np.median(times)) for name, times in round_times.items()}
    best = min(medians, key=medians.__getitem__)
    return verdict_of(best, {name: paired_ratio(times, round_times[best]) for name, times in round_times.items()
                             if name != best})
