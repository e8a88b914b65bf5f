"""The race: the valid candidates near the fastest single call timed together, the way a run times a shape
(bench.harness.timing.time_shape: interleaved shuffled sweeps, lead-in calls, blocks set aside when the machine slows
down or other processes load it, strategies surely over ×1.5 the fastest screened out after a few rounds and the
contenders then timed again alone), and a run's verdict on their paired rounds (stats.ratio_spreads,
stats.decide_spreads, as bench.verdicts.verdicts decides a shape): a winner or a tie.

One process sees no between-process noise: the ratio intervals take the one measured in the project's runs
(BETWEEN_PROCESS_SD_RATIO).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench import stats
from bench.harness import machine, measure, timing
from bench.harness.runner import RETIME_MARGIN
from bench.tuning.options import AutotuneError
from bench.tuning.pick import Pick
from strategies import REGISTRY

RACE_RESERVE_BLOCKS = 2  # the race's window is what is left of budget_s less two blocks of rounds: the window
# closes at the end of a block, and a block set aside (the machine slowed down) is timed again
# One process cannot see how much the ratio of two strategies moves from one process to the next (a run measures it
# with two worker processes and widens its verdict's intervals by it). The race takes what the project's two quick
# runs measured on their 2-core VM (on v4-quickA and v4-quickB: the between-process sd, ln,
# that covers 90% of the two processes' gaps, as bench/verdicts.py pools it): 0.068 over 96 pairs of eager
# strategies (0.040 and 0.086 in the two runs apart), 0.082 over the 60 pairs of the runs' own verdicts, which
# involve compiled strategies. On another machine this is an assumption, and explain() says so.
BETWEEN_PROCESS_SD_RATIO = {"eager": 0.068, "compiled": 0.082}


def racers(first: dict[str, float]) -> list[str]:
    """The valid candidates raced: those whose single call is within RETIME_MARGIN of the fastest (what a run's
    second process re-times); a slower one's rounds would cost more than the budget tells apart."""
    fastest = min(first.values())
    return [n for n in first if first[n] <= RETIME_MARGIN * fastest]


def window(budget_s: float, spent_s: float) -> float:
    """Seconds of kept rounds the race aims at: what is left of the budget, less RACE_RESERVE_BLOCKS blocks."""
    return max(0.0, budget_s - spent_s - RACE_RESERVE_BLOCKS * timing.BLOCK_S)


def race(entries: list[timing.Entry], window_s: float) -> tuple[stats.Verdict, timing.ShapeTiming]:
    """The contest of the valid candidates, the way a run decides a shape: timed together by the run's own timing
    (bench.harness.timing.time_shape) for about `window_s` of kept rounds, then the verdict of `decide`. The one place
    autotune times a race. It does not wait for other processes' load or a slow episode to pass (a run waits up to
    seconds): a block of rounds set aside is timed again at once, and past timing.MIN_SET_ASIDE the disturbed blocks
    are kept and the pick's note says so."""
    guard_s = max(60.0, 20 * (window_s + timing.MIN_ROUNDS * sum(max(e.one_call_s, timing.MIN_ROUND_S)
                                                                 for e in entries)))
    result = timing.time_shape(entries, window_s, machine.Calibration(), machine.Settler(0.0, 0.0), guard_s)
    return decide(entries), result


def decide(entries: list[timing.Entry]) -> stats.Verdict:
    """A run's verdict rule on the raced entries: the paired ratios by sweep of those still contenders
    (stats.ratio_spreads, stats.decide_spreads: bench.verdicts.verdicts does the same with the run's measured
    between-process variance; one process cannot measure it, BETWEEN_PROCESS_SD_RATIO stands for it)."""
    timed = [e for e in entries if e.error is None and e.rounds]
    contenders = [e for e in timed if e.contender] or timed
    best, spreads = stats.ratio_spreads({e.name: (e.rounds, [len(e.rounds)], e.round_sweeps) for e in contenders})
    return stats.decide_spreads(best, spreads, between_process_sd([e.name for e in contenders]) ** 2)


def between_process_sd(names: Sequence[str]) -> float:
    """The between-process sd (ln) a ratio among these strategies is taken to have (BETWEEN_PROCESS_SD_RATIO)."""
    return BETWEEN_PROCESS_SD_RATIO["compiled" if any(REGISTRY[n].compiled for n in names) else "eager"]


def raced(pick: Pick, entries: list[timing.Entry], window_s: float) -> None:
    """The race's verdict and times into `pick`. A candidate whose call raised while raced is refused with that
    error; the guard against a hang keeps what was timed before it."""
    try:
        verdict, result = race(entries, window_s)
        sweeps = result.sweeps
        notes = [f"timed while the machine was disturbed ({result.unstable})" if result.unstable else "",
                 f"{result.blocks_set_aside} of {result.blocks} blocks of rounds set aside (the machine was slow or "
                 "other processes loaded it) and timed again" if result.blocks_set_aside else ""]
    except measure.CaseTimeout as exc:
        for e in entries:
            if len(e.rounds) < timing.MIN_ROUNDS_TO_DROP:
                e.error = e.error or exc
        if not any(e.error is None for e in entries):
            raise AutotuneError(f"the race of {', '.join(e.name for e in entries)} hung: {exc}") from None
        verdict, sweeps = decide(entries), None
        notes = [f"the race stopped early ({exc}): decided on the rounds timed before"]
    _record(pick, entries, verdict)
    pick.rounds = sweeps if sweeps is not None else max(pick.kept.values(), default=0)
    pick.note = "; ".join(n for n in notes if n)


def _record(pick: Pick, entries: list[timing.Entry], verdict: stats.Verdict) -> None:
    """Each raced candidate's median (or the error that refuses it) and the verdict, into `pick`."""
    for e in entries:
        if e.error is not None:
            pick.refused[e.name] = f"error while raced: {type(e.error).__name__}: {measure.first_line(e.error)}"
            pick.times.pop(e.name, None)
        elif e.rounds:
            pick.times[e.name] = statistics.median(e.rounds)
            pick.kept[e.name] = len(e.rounds)
    pick.strategy, pick.verdict, pick.tied_with = verdict.best, verdict.verdict, list(verdict.tied_with)
    pick.ratios = {n: list(r) for n, r in verdict.ratios.items()}
    pick.raced = [e.name for e in entries]
    pick.contenders = [verdict.best, *verdict.ratios]
