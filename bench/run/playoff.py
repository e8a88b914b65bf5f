"""The playoff of one shape: its close contenders re-timed in interleaved rounds, and the verdict.

After every strategy of a shape has been timed on its own, the valid autodiff strategies within CONTENDER_MARGIN of
the fastest run again, round after round, in a shuffled order each round, in one process: a slow moment of the
machine lands on all of them alike, and each round gives a paired ratio to the best (bench/stats.py decides).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from bench import stats
from bench.run import machine, measure
from bench.schema import AXES, CLOSED_FORM, CONTENDER_MARGIN, SETTING

Record = dict[str, Any]
ROUNDS = (9, 41)  # interleaved rounds of a playoff: at least, at most


def candidates(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(every valid autodiff record of the shape, fastest first; those within CONTENDER_MARGIN of the fastest)."""
    valid = sorted((r for r in records if r["status"] == "ok" and r["is_jacobian"] and r["strategy"] != CLOSED_FORM),
                   key=lambda r: r["time_median_s"])
    if not valid:
        return [], []
    return valid, [r for r in valid if r["time_median_s"] <= CONTENDER_MARGIN * valid[0]["time_median_s"]]


def rounds_for(contenders: list[Record], target_s: float) -> int:
    """Enough rounds to spend about twice the case's timing budget, within ROUNDS."""
    round_s = sum(r["time_median_s"] * r["iterations"] for r in contenders)
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


def sole(valid: list[Record], contenders: list[Record]) -> Record:
    """The record of a shape with one contender: a winner by more than CONTENDER_MARGIN (first timings)."""
    runner_up = valid[1] if len(valid) > 1 else None
    ratio = runner_up["time_median_s"] / valid[0]["time_median_s"] if runner_up else None
    return base(valid, contenders) | {
        "best": valid[0]["strategy"], "verdict": "winner", "tied_with": [], "rounds": 0,
        "runner_up": runner_up["strategy"] if runner_up else None, "runner_up_ratio": [ratio] * 3 if ratio else None}


def decided(valid: list[Record], contenders: list[Record], times: dict[str, list[float]]) -> Record:
    """The record of a shape whose contenders were timed interleaved."""
    verdict = stats.decide(times)
    return base(valid, contenders) | {
        "best": verdict.best, "verdict": verdict.verdict, "tied_with": verdict.tied_with, "rounds": len(
            next(iter(times.values()))), "runner_up": verdict.runner_up,
        "runner_up_ratio": list(verdict.ratios[verdict.runner_up]),
        "ratios": {k: list(v) for k, v in verdict.ratios.items()}, "round_times_s": times}


def base(valid: list[Record], contenders: list[Record]) -> Record:
    return {**{k: valid[0][k] for k in (*SETTING, *AXES)}, "contenders": [r["strategy"] for r in contenders],
            "unstable": False, "message": ""}
