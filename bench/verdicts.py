"""Finishing a run: the run's noise model, every ok case's rerun interval, and every shape's verdict, from the
records alone (no torch): the same numbers whether the run just ended, was resumed, or its shards were merged.

A case's rounds come from one or two worker processes (bench/run/session.py). The between-process variance is
pooled over the run's cases measured in both (stats.pooled_excess); each ok case then gets the interval a rerun's
median falls in (stats.rerun_interval) and `log_time_sd`, and each shape's contenders get the paired ratios to the
fastest with 95% intervals that include the variance a process adds to a ratio, and the verdict (stats.verdict_of).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from pytest_benchmark.stats import Stats

from bench import rules, stats
from bench.schema import SHAPE_COLUMNS, CaseRecord, VerdictRecord


def timing_fields(rounds: list[float], process_rounds: list[int], pooled: float) -> dict[str, Any]:
    """The statistics of a case's rounds (pytest-benchmark's Stats) and its rerun interval given the run's pooled
    between-process variance."""
    summary = Stats()
    for seconds in rounds:
        summary.update(seconds)
    s = stats.spread(rounds, process_rounds)
    _, low, high = stats.rerun_interval(s, pooled)
    return {"time_median_s": summary.median, "time_iqr_s": summary.iqr, "time_min_s": summary.min,
            "time_mean_s": summary.mean, "rounds": len(rounds), "time_ci_low_s": low, "time_ci_high_s": high,
            "log_time_sd": stats.log_sd(s, pooled)}


MIN_SOLO_CASES = 8  # eager strategies that are no contender, timed in both processes, that calibrate their own pool


@dataclasses.dataclass(frozen=True)
class Noise:
    """What the run learned about its own noise: ln-scale variances a process adds beyond its rounds, apart for
    eager and compiled strategies (a compiled strategy's speed changes more from one process to the next), and for
    an eager strategy that is no contender: its few rounds, timed on its own in a few short stretches, sample fewer
    moments of the machine than a contender's rounds spread over the window do.
    The eager pool alone (its cases timed twice are mostly contenders) gave intervals that held 88.8% of a rerun's
    medians for these cases (2,480 cases, seven pairs of quick runs here, both ways); with their own pool (never
    below the eager one), 92.3%."""

    time_excess: float  # of an eager case's median
    compiled_time_excess: float  # of a compiled case's median
    ratio_excess: float  # of a paired ratio between two strategies of a shape
    cases_in_two_processes: int
    pairs_in_two_processes: int
    solo_time_excess: float = 0.0  # of the eager cases that are no contender, timed in both processes

    @property
    def no_contender_excess(self) -> float:
        """Of an eager case that is no contender: its own pool, never below the eager one."""
        return max(self.time_excess, self.solo_time_excess)

    def time_excess_of(self, record: CaseRecord) -> float:
        if record.compiled:
            return self.compiled_time_excess
        return self.no_contender_excess if record.contender is False else self.time_excess

    def summary(self) -> dict[str, Any]:
        """For env.json: standard deviations (ln), i.e. about the relative spread a process adds."""
        return {"between_process_sd_time": round(math.sqrt(self.time_excess), 4),
                "between_process_sd_time_compiled": round(math.sqrt(self.compiled_time_excess), 4),
                "between_process_sd_time_no_contender": round(math.sqrt(self.no_contender_excess), 4),
                "between_process_sd_ratio": round(math.sqrt(self.ratio_excess), 4),
                "cases_in_two_processes": self.cases_in_two_processes,
                "pairs_in_two_processes": self.pairs_in_two_processes}


def timed(records: Iterable[CaseRecord]) -> list[CaseRecord]:
    return [r for r in records if r.status == "ok" and r.round_times_s]


def noise(records: list[CaseRecord]) -> Noise:
    """The run's between-process variance of medians and of paired ratios."""
    ok = timed(records)
    eager = [stats.spread(r.round_times_s, r.process_rounds) for r in ok if not r.compiled]
    compiled = [stats.spread(r.round_times_s, r.process_rounds) for r in ok if r.compiled]
    solo = [stats.spread(r.round_times_s, r.process_rounds) for r in ok if not r.compiled and r.contender is False]
    ratios = [s for shape in _shapes(ok) for s in _ratio_spreads(shape)[1].values()]
    return Noise(stats.pooled_excess(eager), stats.pooled_excess(compiled) if compiled else 0.0,
                 stats.pooled_excess(ratios, stats.RATIO_COVERED), sum(s.excess is not None for s in eager + compiled),
                 sum(s.excess is not None for s in ratios),
                 stats.pooled_excess(solo) if sum(bool(s.gaps) for s in solo) >= MIN_SOLO_CASES else 0.0)


def with_intervals(records: list[CaseRecord], model: Noise) -> list[CaseRecord]:
    """Every timed record with its statistics and rerun interval under the run's noise model."""
    return [dataclasses.replace(r, **timing_fields(r.round_times_s, r.process_rounds, model.time_excess_of(r)))
            if r.status == "ok" and r.round_times_s else r for r in records]


def verdicts(records: list[CaseRecord], model: Noise) -> list[VerdictRecord]:
    """One verdict per shape with a valid autodiff strategy: its contenders' paired ratios to the fastest."""
    found = []
    for shape in _shapes(timed(records)):
        best, spreads = _ratio_spreads(shape)
        if best is None:
            continue
        contenders = [r for r in shape if r.contender is not False]
        verdict = stats.decide_spreads(best, spreads, model.ratio_excess)
        runner_up = verdict.runner_up
        first = shape[0]
        unstable = [r for r in contenders if r.unstable]
        found.append(VerdictRecord(
            model=first.model, device=first.device, dtype=first.dtype, mode=first.mode, quantity=first.quantity,
            **first.sizes._asdict(),
            best=best, verdict=verdict.verdict, tied_with=verdict.tied_with, runner_up=runner_up,
            runner_up_ratio=list(verdict.ratios[runner_up]) if runner_up else _lead(shape, best),
            ratios={k: list(v) for k, v in verdict.ratios.items()}, contenders=[r.strategy for r in contenders],
            rounds=min((len(r.round_times_s) for r in contenders), default=0),
            processes=max((len(r.process_rounds) for r in contenders), default=1),
            unstable=bool(unstable), message="; ".join([*(f"{r.strategy}: {r.message}" for r in unstable),
                                                         *_ratio_notes(best, spreads, verdict.ratios)])))
    return found


def _ratio_notes(best: str, spreads: dict[str, stats.Spread], ratios: dict[str, stats.Interval]) -> list[str]:
    """What a reader must know about a ratio that is not what the verdict usually rests on: one from two medians
    timed apart (no rounds paired with the best's), or one that is unknown (a tie by the rule: not surely slower)."""
    notes = []
    for name, s in spreads.items():
        estimate, low, high = ratios[name]
        if not all(math.isfinite(v) for v in (estimate, low, high)):
            notes.append(f"{name}: ratio to {best} unknown or unbounded (too few rounds); counted as a tie")
        elif not s.paired:
            notes.append(f"{name}: no rounds paired with {best}'s; ratio of the two medians timed apart")
    return notes


def shape_key(record: CaseRecord | VerdictRecord) -> tuple:
    return tuple(getattr(record, c) for c in SHAPE_COLUMNS)


def _shapes(records: list[CaseRecord]) -> list[list[CaseRecord]]:
    """The records of each shape that may win it (bench/rules.py)."""
    by_shape: dict[tuple, list[CaseRecord]] = {}
    for r in records:
        if rules.eligible(r):
            by_shape.setdefault(shape_key(r), []).append(r)
    return list(by_shape.values())


def _ratio_spreads(shape: list[CaseRecord]) -> tuple[str | None, dict[str, stats.Spread]]:
    contenders = {r.strategy: (r.round_times_s, r.process_rounds, r.round_sweeps) for r in shape
                  if r.contender is not False}
    if not contenders:
        return None, {}
    return stats.ratio_spreads(contenders)


def _lead(shape: list[CaseRecord], best: str) -> list[float] | None:
    """A sole contender's lead: the next strategy's median over its own (no paired rounds: a point ratio)."""
    medians = sorted((r.time_median_s, r.strategy) for r in shape if _positive(r.time_median_s))
    following = [m for m, name in medians if name != best]
    own = [m for m, name in medians if name == best]
    lead = following[0] / own[0] if following and own else None
    return [lead] * 3 if lead else None


def _positive(value: float | None) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def benchmark_entries(records: Iterable[CaseRecord]) -> list[dict[str, Any]]:
    """pytest-benchmark JSON entries, one per timed case, with every kept round (what `pytest-benchmark compare`
    reads): the record of the timings in pytest-benchmark's own format."""
    entries = []
    for r in timed(records):
        summary = Stats()
        for seconds in r.round_times_s:
            summary.update(seconds)
        entries.append({
            "group": r.case_id.removeprefix(f"{r.strategy}-"), "name": f"test_shape[{r.case_id}]",
            "fullname": f"bench/run/suite.py::test_shape[{r.case_id}]", "params": {"case": r.case_id},
            "param": r.case_id, "extra_info": {"kind": "case"} | {k: v for k, v in r.as_dict().items()
                                                                if k not in ("summary", "cost", "round_times_s")},
            "options": {"timer": "synced_clock", "min_rounds": 1, "disable_gc": False, "warmup": True,
                        "interleaved": True, "iterations": r.iterations},
            "stats": summary.as_dict() | {"data": list(r.round_times_s), "iterations": r.iterations or 1}})
    return entries

