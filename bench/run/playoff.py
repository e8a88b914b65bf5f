"""The playoff of one shape: its close contenders re-timed in interleaved rounds, and the verdict.

After every strategy of a shape has been timed on its own, the valid autodiff strategies within
stats.CONTENDER_MARGIN of the fastest run again, round after round, in a shuffled order each round, in one process: a
slow moment of the machine lands on all of them alike, and each round gives a paired ratio to the best (bench/stats.py
decides). The result is a VerdictRecord: reports read the verdict, its contenders and `tied_with` from it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from bench import stats
from bench.run import machine, measure
from bench.schema import CaseRecord, VerdictRecord, is_closed_form

ROUNDS = (9, 41)  # interleaved rounds of a playoff: at least, at most


def candidates(records: list[CaseRecord]) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """(every valid autodiff record of the shape, fastest first; the contenders among them)."""
    valid = sorted((r for r in records if r.status == "ok" and r.is_jacobian and not r.estimator
                     and not is_closed_form(r.strategy)),
                   key=lambda r: r.time_median_s)
    if not valid:
        return [], []
    return valid, [r for r in valid if stats.is_contender(r.time_median_s, valid[0].time_median_s)]


def hold(records: list[CaseRecord], call_of: Callable[[str], Callable[[], object]], target_s: float,
         time_budget_s: float, settler: machine.Settler, drift: str) -> VerdictRecord | None:
    """The verdict of a finished shape: its contenders timed interleaved (a sole contender wins on its first timing);
    None when no autodiff strategy of the shape is valid. A disturbed playoff is held again once, after the machine
    is quiet; what stays disturbed is `unstable`."""
    valid, contenders = candidates(records)
    if not valid:
        return None
    if len(contenders) == 1:
        return sole(valid, contenders)
    calls = {r.strategy: call_of(r.strategy) for r in contenders}
    iterations = {r.strategy: r.iterations for r in contenders}
    n = rounds_for(contenders, target_s)
    guard = max(30.0, 20 * n * time_budget_s * len(calls))
    times, disturbed = interleave(calls, iterations, n, guard)
    note = ""
    if disturbed and settler.settle():
        note = f"re-timed: the first playoff was disturbed ({disturbed})"
        times, disturbed = interleave(calls, iterations, n, guard)
    reason = disturbed or drift
    verdict = decided(valid, contenders, times)
    verdict.unstable = bool(reason)
    verdict.message = "; ".join(m for m in (note, f"unstable: {reason}" if reason else "") if m)
    return verdict


def rounds_for(contenders: list[CaseRecord], target_s: float) -> int:
    """Enough rounds to spend about twice the case's timing budget, within ROUNDS."""
    round_s = sum(r.time_median_s * r.iterations for r in contenders)
    return int(min(ROUNDS[1], max(ROUNDS[0], 2 * target_s // round_s)))


def interleave(calls: dict[str, Callable[[], object]], iterations: dict[str, int], rounds: int, guard_s: float
               ) -> tuple[dict[str, list[float]], str]:
    """`rounds` rounds; in each, every contender runs its `iterations` calls once, in a shuffled order. Returns the
    per-call time of every round and why the machine was disturbed meanwhile ("" if it was not)."""
    order = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm again: the shape's other strategies ran in between
    with measure.time_limit(guard_s, "the playoff"):
        before = machine.snapshot()
        for _ in range(rounds):
            names = list(calls)
            order.shuffle(names)
            for name in names:
                times[name] += measure.time_rounds(calls[name], iterations[name], 1)
    return times, machine.disturbance(before, machine.snapshot())


def sole(valid: list[CaseRecord], contenders: list[CaseRecord]) -> VerdictRecord:
    """The verdict of a shape with one contender: a winner by more than the contender margin (first timings)."""
    runner_up = valid[1] if len(valid) > 1 else None
    ratio = runner_up.time_median_s / valid[0].time_median_s if runner_up else None
    return _shape_of(valid[0], contenders, best=valid[0].strategy, verdict="winner",
                     runner_up=runner_up.strategy if runner_up else None,
                     runner_up_ratio=[ratio] * 3 if ratio else None)


def decided(valid: list[CaseRecord], contenders: list[CaseRecord], times: dict[str, list[float]]) -> VerdictRecord:
    """The verdict of a shape whose contenders were timed interleaved."""
    verdict = stats.decide(times)
    return _shape_of(valid[0], contenders, best=verdict.best, verdict=verdict.verdict, tied_with=verdict.tied_with,
                     rounds=len(next(iter(times.values()))), runner_up=verdict.runner_up,
                     runner_up_ratio=list(verdict.ratios[verdict.runner_up]),
                     ratios={k: list(v) for k, v in verdict.ratios.items()}, round_times_s=times)


def _shape_of(record: CaseRecord, contenders: list[CaseRecord], **verdict) -> VerdictRecord:
    return VerdictRecord(model=record.model, device=record.device, dtype=record.dtype, mode=record.mode,
                         **record.sizes._asdict(), contenders=[r.strategy for r in contenders], **verdict)
