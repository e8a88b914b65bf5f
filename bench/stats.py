"""Statistics for noisy timings: intervals of a median and of a ratio, what a rerun will see, and the verdict.

The bootstrap intervals (median_ci, ratio_of_medians) resample with a fixed seed, so the same numbers always give the
same interval. A verdict (bench/verdicts.py for a run, autotune's race for one process) takes the paired ratios of a
shape's contenders (ratio_spreads), widens each ratio's interval by the between-process variance (spread,
pooled_excess, confidence_interval) and applies the tie rule (decide_spreads, verdict_of).
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
        return min(self.ratios, key=lambda name: _order(self.ratios[name])) if self.ratios else None


def is_contender(time_s: float, best_s: float) -> bool:
    """A strategy whose time is within CONTENDER_MARGIN of the fastest's may still win: it is re-timed."""
    return time_s <= CONTENDER_MARGIN * best_s


def as_interval(value: object) -> Interval:
    """(estimate, low, high) from whatever a record holds: a missing, null, NaN or short entry reads as NaN (unknown).
    Result files write NaN and inf as null (strict JSON has neither)."""
    items = list(value) if isinstance(value, list | tuple) else []
    numbers = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan for v in items[:3]]
    return tuple(numbers + [math.nan] * (3 - len(numbers)))  # type: ignore[return-value]


def _known(x: float) -> bool:
    return not math.isnan(x)


def verdict_of(best: str, ratios: Mapping[str, Interval]) -> Verdict:
    """The tie rule: a contender whose ratio interval reaches down to TIE_MARGIN ties with the best; with no tie,
    the best is the winner. A contender whose interval is unknown (NaN or null: no rounds to pair) is not surely
    slower: it ties, listed after those with a known ratio."""
    ratios = {name: as_interval(r) for name, r in ratios.items()}
    tied = sorted((n for n, (_, low, _) in ratios.items() if not low > TIE_MARGIN), key=lambda n: _order(ratios[n]))
    return Verdict(best=best, verdict="tie" if tied else "winner", tied_with=tied, ratios=ratios)


def _order(interval: Interval) -> tuple[bool, float]:
    """Known ratios first, smallest first; unknown ones last."""
    return (not _known(interval[0]), interval[0] if _known(interval[0]) else 0.0)


# ---- what a rerun will see -------------------------------------------------------------------------------------------
#
# A case's rounds come from one or more worker processes (a run uses two: bench/run/session.py), each a series of
# rounds spread over the shape's measuring window. The median a rerun will measure differs from this run's by the
# noise of the rounds (within a process, slow drift included: a block bootstrap keeps neighbouring rounds together)
# and by what sets the speed of a whole process (memory layout, a slow episode of the machine that lasts a process):
# the between-process variance, seen directly where a case ran in two processes and pooled over the run's cases.

Z = 1.959963984540054  # two-sided 95% quantile of the normal distribution
BLOCKS = 8  # a process's rounds are resampled in about this many blocks of consecutive rounds


def median_order_ci(samples: Sequence[float]) -> Interval:
    """The median and its distribution-free 95% interval from order statistics: no resampling, cheap enough to judge
    a strategy after every block of rounds. With fewer than 6 rounds it is [min, max]."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    k = max(0, int(math.floor((n - Z * math.sqrt(n)) / 2)))  # 0-based index of the lower bound
    return float(np.median(x)), float(x[k]), float(x[n - 1 - k])


def log_median_se(samples: Sequence[float]) -> float:
    """Standard error of ln(median) of one process's rounds (in time order): the larger of a moving-block bootstrap
    (blocks of consecutive rounds keep slow drift together) and the order-statistic interval (few rounds)."""
    x = np.log(np.asarray(samples, dtype=float))
    n = len(x)
    if n < 2:
        return math.inf
    _, low, high = median_order_ci(x)
    order_se = (high - low) / (2 * Z)
    block = max(1, math.ceil(n / BLOCKS))
    rng = np.random.default_rng(SEED)
    starts = rng.integers(0, n - block + 1, size=(RESAMPLES // 4, math.ceil(n / block)))
    index = (starts[:, :, None] + np.arange(block)).reshape(len(starts), -1)[:, :n]
    return float(max(order_se, np.std(np.median(x[index], axis=1))))


def by_process(values: Sequence[float], process_rounds: Sequence[int]) -> list[np.ndarray]:
    """The rounds of each process that kept any, in order: process_rounds = [rounds of the first process, of the
    second, ...]."""
    return [part for part in each_process(values, process_rounds) if len(part)]


def each_process(values: Sequence[float], process_rounds: Sequence[int]) -> list[np.ndarray]:
    """The rounds of every process, in order, empty where a process kept none: part i is process i's, so two
    strategies' parts pair process by process. Counts that do not add up to the rounds read as one process."""
    values = np.asarray(values, dtype=float)
    counts = list(process_rounds or [])
    if not counts or any(not isinstance(c, int) or c < 0 for c in counts) or sum(counts) != len(values):
        return [values] if len(values) else []
    edges = np.cumsum([0, *counts])
    return [values[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


@dataclass(frozen=True)
class Spread:
    """What one case's rounds say about how its median moves between runs (all in natural log)."""

    center: float  # ln of the estimate: the median of all rounds, or of the paired ratios
    within: float  # variance of the mean of the processes' ln medians that their own rounds explain
    excess: float | None  # between-process variance this case showed beyond `within` (None: one process)
    processes: int
    within_each: float = 0.0  # the mean variance of one process's ln median from its own rounds
    gaps: tuple[float, ...] = ()  # ln median of each process minus that of the next (two or more processes)
    paired: bool = True  # a ratio from rounds timed side by side (False: two medians timed apart, unpaired_spread)


def spread(values: Sequence[float], process_rounds: Sequence[int], center: float | None = None) -> Spread:
    """The Spread of positive values (seconds per call, or paired ratios) measured in one or more processes."""
    every = by_process(values, process_rounds)
    if not every:
        return Spread(math.nan, math.inf, None, 0)
    # a process that kept one round has no spread of its own: its round counts in the center only
    parts = [p for p in every if len(p) >= 2] or every
    ses = [log_median_se(p) for p in parts]
    within = sum(se**2 for se in ses) / len(parts) ** 2
    excess = None
    gaps: tuple[float, ...] = ()
    within_each = float(np.mean([se**2 for se in ses]))
    if len(parts) > 1:
        medians = np.log([np.median(p) for p in parts])
        excess = max(0.0, float(np.var(medians, ddof=1)) - within_each)
        gaps = tuple(float(a - b) for a, b in zip(medians[:-1], medians[1:], strict=True))
    if center is None:
        center = float(np.log(np.median(np.concatenate(every))))
    return Spread(center, within, excess, len(parts), within_each, gaps)


COVERED = 0.95  # the share of the run's own process-to-process gaps the pooled variance of a time must cover
RATIO_COVERED = 0.90  # the same for a paired ratio: verdicts also need a 5% margin, and at 0.90 two reruns' winners
# agreed in 100% of 68 + 29 winner verdicts here (default and quick, none contradicted); at 0.95 twice as many ties


def pooled_excess(spreads: Sequence[Spread], covered: float = COVERED) -> float:
    """The run's between-process variance, from the cases measured in two processes, calibrated on the run itself:
    the smallest variance under which `covered` (95%) of the gaps between a case's two process medians fall within
    ±Z of their expected spread, √(2·(between + within)). A process now and then slows a case many times over (the tails
    are heavy): a mean would let those few set every interval, a median would let them fall outside the intervals
    of a rerun. With each case's own excess as a floor (log_sd), 95% of the gaps made intervals that held 89–100%
    of a rerun's medians on the project's VM (two quick and two default runs, each way; 90% held 81–100%): a run in a
    quiet hour sees smaller gaps than a rerun in a busy one will. 0 when no case was measured twice."""
    seen = [s for s in spreads if s.gaps and math.isfinite(s.within)]
    if not seen:
        return 0.0
    needed = [g**2 / (2 * Z**2) - s.within_each for s in seen for g in s.gaps]  # every pair of successive processes
    return max(0.0, float(np.quantile(needed, covered)))


def log_sd(s: Spread, pooled: float) -> float:
    """Standard deviation of this estimate's ln from one run to the next: the rounds' own noise and the larger of
    the run's pooled between-process variance and what this case showed itself."""
    between = max(pooled, s.excess or 0.0)
    return math.sqrt(s.within + between / max(s.processes, 1))


def rerun_interval(s: Spread, pooled: float) -> Interval:
    """The estimate and the 95% interval a rerun's estimate (made the same way) falls in: ±Z·√2·sd in ln."""
    sd = log_sd(s, pooled)
    half = Z * math.sqrt(2) * sd
    return math.exp(s.center), math.exp(s.center - half), math.exp(s.center + half)


def confidence_interval(s: Spread, pooled: float) -> Interval:
    """The estimate and the 95% interval of its true value: ±Z·sd in ln (a ratio for a verdict)."""
    sd = log_sd(s, pooled)
    return math.exp(s.center), math.exp(s.center - Z * sd), math.exp(s.center + Z * sd)


def paired_log_ratios(slower: Rounds, faster: Rounds) -> tuple[list[float], list[int]]:
    """Per-round ratios slower/faster of two strategies of a shape, process by process: a round pairs with the other
    strategy's round of the same sweep (they ran side by side); without sweeps (older runs), round i pairs with round
    i. Returns the ratios and how many came from each process."""
    ratios, counts = [], []
    for (a, sweeps_a), (b, sweeps_b) in zip(_with_sweeps(slower), _with_sweeps(faster), strict=False):
        if sweeps_a is not None and sweeps_b is not None:
            at = dict(zip(sweeps_b, b, strict=True))
            pairs = [(v, at[s]) for s, v in zip(sweeps_a, a, strict=True) if s in at]
        else:
            pairs = list(zip(a, b, strict=False))
        pairs = [(x, y) for x, y in pairs if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)]
        ratios += [x / y for x, y in pairs]
        counts.append(len(pairs))
    return ratios, counts


def _with_sweeps(rounds: Rounds) -> list[tuple[np.ndarray, list[int] | None]]:
    """Each process's rounds with their sweeps (None where the record has no sweeps for them)."""
    values, process_rounds, *rest = rounds
    sweeps = list(rest[0] or []) if rest else []
    parts = each_process(values, process_rounds)
    if len(sweeps) != len(values) or not all(isinstance(s, int | float) for s in sweeps):
        return [(part, None) for part in parts]
    return list(zip(parts, [[int(s) for s in part] for part in each_process(sweeps, process_rounds)], strict=True))


def significantly_different(a: float, sd_a: float, b: float, sd_b: float) -> Interval:
    """a / b with the 95% interval of that ratio between two runs whose estimates move by sd_a and sd_b (ln)."""
    half = Z * math.sqrt(sd_a**2 + sd_b**2)
    ratio = a / b
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)


# (seconds per call of each round, rounds per process[, the sweep of each round within its process])
Rounds = tuple[Sequence[float], Sequence[int]] | tuple[Sequence[float], Sequence[int], Sequence[int]]


def ratio_spreads(contenders: Mapping[str, Rounds]) -> tuple[str, dict[str, Spread]]:
    """The fastest contender (lowest median of all its rounds) and the Spread of every other one's paired ratio to
    it, process by process."""
    medians = {name: float(np.median(rounds[0])) if len(rounds[0]) else math.inf
               for name, rounds in contenders.items()}
    best = min(medians, key=medians.__getitem__)
    spreads = {}
    for name, rounds in contenders.items():
        if name != best:
            ratios, paired = paired_log_ratios(rounds, contenders[best])
            enough = sum(n >= 2 for n in paired) > 0  # a process with two paired rounds has a spread of its own
            spreads[name] = spread(ratios, paired) if enough else unpaired_spread(rounds[0], contenders[best][0])
    return best, spreads


def unpaired_spread(slower: Sequence[float], faster: Sequence[float]) -> Spread:
    """The Spread of median(slower) / median(faster) when the two strategies share no rounds timed side by side (one
    was re-timed in sweeps the other did not run, or kept a single round): each median's own noise, no pairing to
    cancel a slow moment. `paired` says so; with fewer than two rounds on a side the interval is unbounded."""
    a, b = (np.asarray([v for v in x if v > 0 and math.isfinite(v)], dtype=float) for x in (slower, faster))
    if not len(a) or not len(b):
        return Spread(math.nan, math.inf, None, 0, paired=False)
    center = float(np.log(np.median(a)) - np.log(np.median(b)))
    return Spread(center, log_median_se(a) ** 2 + log_median_se(b) ** 2, None, 1, paired=False)


def decide_spreads(best: str, spreads: Mapping[str, Spread], pooled: float) -> Verdict:
    """The verdict from paired ratios measured in one or more processes: each ratio's 95% confidence interval
    includes the run's between-process variance of ratios (`pooled`); verdict_of applies the tie rule."""
    return verdict_of(best, {name: confidence_interval(s, pooled) for name, s in spreads.items()})
