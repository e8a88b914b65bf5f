"""The verdict rules, one by one, on numbers whose answer is known: paired ratios by sweep, a case's spread over its
processes, the run's pooled between-process variance, the intervals it widens, and the tie rule.

A verdict (bench/verdicts.py, autotune's race) is ratio_spreads -> spread -> pooled_excess -> confidence_interval ->
decide_spreads -> verdict_of; each is checked here against what it promises, so a wrong rule fails."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import stats, verdicts
from bench.schema import CaseRecord, Sizes, shape_id
from bench.stats import Spread, Z


def rounds(center: float, spread: float, n: int = 21, seed: int = 1) -> list[float]:
    return list(center * (1 + spread * np.random.default_rng(seed).standard_normal(n)))


# ---- intervals of one set of rounds ----------------------------------------------------------------------------------

def test_median_interval_holds_the_median_and_repeats():
    x = rounds(1e-3, 0.05)
    median, low, high = stats.median_ci(x)
    assert low <= median <= high and median == pytest.approx(float(np.median(x)))
    assert stats.median_ci(x) == (median, low, high)  # fixed seed
    assert stats.median_ci([2.0]) == (2.0, 2.0, 2.0)


def test_significance():
    assert stats.significant((1.3, 1.2, 1.4)) and stats.significant((0.7, 0.6, 0.8))
    assert not stats.significant((1.02, 0.97, 1.08))


# ---- paired ratios ---------------------------------------------------------------------------------------------------

def test_paired_rounds_cancel_a_shared_slowdown():
    """A slow moment that hits both contenders of a sweep alike does not blur their ratio; unpaired, it does."""
    load = np.concatenate([np.ones(10), 5 * np.ones(11)])  # the machine slows down 5× halfway through
    a, b = list(1e-3 * load), list(1.2e-3 * load)
    best, spreads = stats.ratio_spreads({"b": (b, [21]), "a": (a, [21])})
    assert best == "a" and set(spreads) == {"b"}
    assert math.exp(spreads["b"].center) == pytest.approx(1.2) and spreads["b"].within == pytest.approx(0, abs=1e-12)
    _, low_unpaired, high_unpaired = stats.ratio_of_medians(b, a)
    assert high_unpaired - low_unpaired > 1  # unpaired, the slowdown swamps the difference


def test_rounds_pair_by_sweep_not_by_position():
    """b's rounds listed in another order, and one sweep of a missing: each of b's rounds pairs with a's of the same
    sweep, so the ratio is exactly 1.2 in every pair."""
    load = [1.0, 5.0, 1.0, 3.0, 1.0, 2.0, 1.0]
    a_sweeps = [0, 1, 2, 3, 4, 6]  # sweep 5 of a was set aside
    a = [1e-3 * load[s] for s in a_sweeps]
    b_sweeps = [6, 5, 4, 3, 2, 1, 0]
    b = [1.2e-3 * load[s] for s in b_sweeps]
    ratios, per_process = stats.paired_log_ratios((b, [7], b_sweeps), (a, [6], a_sweeps))
    assert per_process == [6] and ratios == pytest.approx([1.2] * 6)


# ---- what a rerun will see -------------------------------------------------------------------------------------------

def two_processes(first: float, second: float, n: int = 25) -> tuple[list[float], list[int]]:
    """Rounds of one case in two processes, centred on `first` and `second`, with 1% noise."""
    return rounds(first, 0.01, n, seed=1) + rounds(second, 0.01, n, seed=2), [n, n]


def test_a_cases_spread_separates_its_processes():
    values, per_process = two_processes(1e-3, 1.2e-3)
    s = stats.spread(values, per_process)
    m1, m2 = np.median(values[:25]), np.median(values[25:])
    (gap,) = s.gaps
    assert s.processes == 2 and gap == pytest.approx(math.log(m1 / m2))
    assert s.excess == pytest.approx(gap**2 / 2 - s.within_each)  # the sample variance of two ln medians, less noise
    assert s.excess > 10 * s.within_each  # 20% between processes against 1% within
    assert s.within == pytest.approx(s.within_each / 2)  # the mean of two processes' medians
    assert s.center == pytest.approx(math.log(np.median(values)))
    one = stats.spread(values[:25], [25])
    assert (one.processes, one.excess, one.gaps) == (1, None, ()) and one.within == pytest.approx(one.within_each)
    same = stats.spread(*two_processes(1e-3, 1e-3))
    assert same.excess < s.excess / 100  # two processes at one speed: little or nothing beyond their rounds' noise
    values3 = values + rounds(1.1e-3, 0.01, 25, seed=3)
    three = stats.spread(values3, [25, 25, 25])  # PROCESSES=3: a gap between each process and the next
    m3 = np.median(values3[50:])
    assert three.processes == 3 and three.gaps == pytest.approx((math.log(m1 / m2), math.log(m2 / m3)))
    assert three.excess == pytest.approx(np.var(np.log([m1, m2, m3]), ddof=1) - three.within_each)


def test_the_pooled_variance_is_the_smallest_that_covers_the_runs_gaps():
    """pooled_excess: the smallest between-process variance under which 95% (or `covered`) of the run's gaps between
    a case's two process medians lie within ±Z·√(2·(between + within))."""
    gaps = np.linspace(0.005, 0.2, 40) * np.where(np.arange(40) % 2, 1, -1)  # ln gaps of 40 cases, both signs
    spreads = [Spread(0.0, 1e-5, 0.0, 2, within_each=2e-5, gaps=(float(g),)) for g in gaps]
    spreads += [Spread(0.0, 1e-5, None, 1)]  # a case in one process says nothing about processes

    def covered(between: float) -> float:
        return float(np.mean([abs(g) <= Z * math.sqrt(2 * (between + s.within_each)) + 1e-12
                              for s in spreads for g in s.gaps]))

    for share in (stats.COVERED, stats.RATIO_COVERED):
        pooled = stats.pooled_excess(spreads, share)
        assert pooled > 0 and covered(pooled) >= share
        assert covered(0.95 * pooled) < share  # the smallest such variance: less would leave gaps out
    assert stats.pooled_excess(spreads, stats.RATIO_COVERED) < stats.pooled_excess(spreads)
    assert stats.pooled_excess([Spread(0.0, 1e-5, None, 1)]) == 0.0  # no case measured twice
    in_three = [Spread(0.0, 1e-5, 0.0, 3, within_each=2e-5, gaps=(float(a), float(b))) for a, b in gaps.reshape(-1, 2)]
    assert stats.pooled_excess(in_three) == pytest.approx(stats.pooled_excess(spreads))  # each gap counts
    quiet = [Spread(0.0, 1e-5, 0.0, 2, within_each=1e-3, gaps=(1e-4,)) for _ in range(10)]  # within the rounds' noise
    assert stats.pooled_excess(quiet) == 0.0


def test_intervals_add_the_larger_between_process_variance_to_the_rounds_noise():
    s = Spread(center=math.log(1.2), within=0.0004, excess=None, processes=1)
    sd = math.sqrt(0.0004 + 0.0045)  # 0.07
    assert stats.log_sd(s, 0.0045) == pytest.approx(sd)
    assert stats.confidence_interval(s, 0.0045) == pytest.approx((1.2, 1.2 * math.exp(-Z * sd),
                                                                  1.2 * math.exp(Z * sd)))
    assert stats.rerun_interval(s, 0.0045) == pytest.approx((1.2, 1.2 * math.exp(-Z * math.sqrt(2) * sd),
                                                             1.2 * math.exp(Z * math.sqrt(2) * sd)))
    own = Spread(center=0.0, within=0.0004, excess=0.02, processes=2)  # this case showed more than the run's pool
    assert stats.log_sd(own, 0.0045) == pytest.approx(math.sqrt(0.0004 + 0.02 / 2))
    assert stats.log_sd(own, 0.05) == pytest.approx(math.sqrt(0.0004 + 0.05 / 2))


# ---- the verdict -----------------------------------------------------------------------------------------------------

def test_the_tie_rule():
    """A contender ties unless its whole interval is over TIE_MARGIN; ties sorted by ratio; no tie: a winner."""
    verdict = stats.verdict_of("a", {"c": (1.3, 1.04, 1.5), "b": (1.1, 1.0, 1.2), "d": (2.0, 1.06, 3.0)})
    assert (verdict.best, verdict.verdict, verdict.tied_with, verdict.runner_up) == ("a", "tie", ["b", "c"], "b")
    alone = stats.verdict_of("a", {"d": (2.0, 1.06, 3.0), "e": (1.5, 1.4, 1.6)})
    assert (alone.verdict, alone.tied_with, alone.runner_up) == ("winner", [], "e")


def paired(ratio_first: float, ratio_second: float) -> dict[str, tuple[list[float], list[int]]]:
    """Two contenders timed side by side in two processes: b is ratio_first × a in the first, ratio_second × in the
    second (1% noise, shared by both of a sweep)."""
    a, per_process = two_processes(1e-3, 1e-3)
    b = [t * ratio_first for t in a[:25]] + [t * ratio_second for t in a[25:]]
    return {"a": (a, per_process), "b": (b, per_process)}


def test_a_small_sure_difference_is_a_winner_only_where_processes_agree():
    """8% in every pair of both processes: a winner when the run's processes do not move ratios (pooled 0); a tie
    when they move them by 5% (sd), as a rerun may then see 8% shrink under 5%."""
    best, spreads = stats.ratio_spreads(paired(1.08, 1.08))
    assert best == "a"
    assert stats.decide_spreads(best, spreads, 0.0).verdict == "winner"
    assert stats.decide_spreads(best, spreads, 0.05**2).tied_with == ["b"]


def test_a_ratio_that_moved_between_its_own_processes_is_a_tie():
    """b was 1% slower in one process and 17% in the other: its own between-process variance widens its interval
    even where the run's pooled variance is 0."""
    best, spreads = stats.ratio_spreads(paired(1.01, 1.17))
    assert best == "a" and spreads["b"].excess > 0.005
    verdict = stats.decide_spreads(best, spreads, 0.0)
    assert verdict.verdict == "tie" and verdict.ratios["b"][1] <= stats.TIE_MARGIN


def test_a_clear_difference_wins_and_a_small_sure_one_ties():
    """30% slower in every round: a winner. 3% slower in every round: significant, but under the 5% a rerun on
    another day would not keep, so a tie."""
    base = rounds(1e-3, 0.001, 25)
    for ratio, verdict in ((1.3, "winner"), (1.03, "tie")):
        best, spreads = stats.ratio_spreads({"a": (base, [25]), "b": ([t * ratio for t in base], [25])})
        decided = stats.decide_spreads(best, spreads, 0.0)
        assert decided.best == "a" and decided.verdict == verdict
        assert decided.ratios["b"][0] == pytest.approx(ratio) and stats.significant(decided.ratios["b"])


# ---- the run's noise model, from its records -------------------------------------------------------------------------

def _timed(strategy: str, batch: int, first: float, second: float | None, contender: bool) -> CaseRecord:
    """An eager case with 7 rounds (1% noise) in one process, or in two centred on `first` and `second`."""
    times, per_process = two_processes(first, second, 7) if second else (rounds(first, 0.01, 7), [7])
    sizes = Sizes(batch, 64, 8, 8)
    return CaseRecord(strategy=strategy, model="mlp", device="cpu", dtype="float32", **sizes._asdict(), status="ok",
                      round_times_s=times, process_rounds=per_process, contender=contender,
                      case_id=f"{strategy}-cpu-{shape_id('mlp', 'float32', sizes)}")


def test_a_strategy_that_is_no_contender_gets_the_between_process_noise_of_its_kind():
    """Contenders moved 2% between processes and the strategies timed on their own 20% (10 cases of 210: the run's
    eager pool, the 95th percentile of all gaps, does not see them): a case timed on its own in one process gets an
    interval as wide as theirs, a contender the eager pool's; with fewer than MIN_SOLO_CASES of them timed twice,
    the eager pool serves both (and it is never narrower)."""
    contenders = [_timed("fast", b, 1e-3, 1.02e-3, True) for b in range(1, 201)]
    solos = [_timed("slow", b, 1e-2, 1e-2 * (1.2 if b % 2 else 1 / 1.2), False) for b in range(1, 11)]
    alone, contender_alone = _timed("slow", 99, 1e-2, None, False), _timed("fast", 99, 1e-3, None, True)

    def width(model: verdicts.Noise, record: CaseRecord) -> float:
        [found] = verdicts.with_intervals([record], model)
        return math.log(found.time_ci_high_s / found.time_ci_low_s)

    model = verdicts.noise([*contenders, *solos, alone, contender_alone])
    assert model.solo_time_excess > 50 * model.time_excess
    assert width(model, alone) > 4 * width(model, contender_alone)
    assert model.summary()["between_process_sd_time_no_contender"] == pytest.approx(
        math.sqrt(model.solo_time_excess), abs=1e-4)
    few = verdicts.noise([*contenders, *solos[:verdicts.MIN_SOLO_CASES - 1], alone])
    assert few.solo_time_excess == 0.0 and width(few, alone) == pytest.approx(width(few, contender_alone), rel=0.5)
    quiet = verdicts.noise([*contenders, *[_timed("slow", b, 1e-2, 1e-2, False) for b in range(1, 11)]])
    assert quiet.time_excess_of(alone) == quiet.time_excess  # never narrower than the contenders'


def test_the_reports_noise_line_names_the_wider_noise_of_strategies_that_are_no_contender():
    from bench.report.environment import noise_line

    noise = {"between_process_sd_time": 0.03, "between_process_sd_time_compiled": 0.05,
             "between_process_sd_time_no_contender": 0.09, "between_process_sd_ratio": 0.01,
             "cases_in_two_processes": 90}
    assert ("(compiled strategies ±5.0%; a strategy that is no contender, timed on its own in a few stretches, "
            "±9.0%)") in noise_line({"noise": noise})
    same = noise | {"between_process_sd_time_no_contender": 0.03}
    assert "no contender" not in noise_line({"noise": same}) and "(compiled strategies ±5.0%)" in noise_line(
        {"noise": same})
    older = {k: v for k, v in noise.items() if k != "between_process_sd_time_no_contender"}  # a run before it
    assert "no contender" not in noise_line({"noise": older})
