"""Every valid strategy of one shape timed together: short rounds, interleaved in a shuffled order, spread over the
shape's measuring window, with the machine watched in between.

A sweep runs one round of each strategy still being timed (a round = `iterations` calls, at least MIN_ROUND_S long),
in a new shuffled order; sweeps are grouped in blocks of at least BLOCK_S. Before each block a calibration call says
whether the machine runs at its usual speed in this run; after it, /proc/stat says whether other processes used the
CPUs. A disturbed block is set aside (its rounds are not kept) and measured again — after waiting for other processes
to finish when they were the cause; past MIN_SET_ASIDE and half of the shape's blocks, a slow episode of the machine is
waited out (EPISODE_WAITS times at most, within the process's waiting budget) and the block measured again; past that,
disturbed blocks are kept and the shape's strategies are `unstable` with the reason.

After each block every strategy is judged on its kept rounds:
- a strategy whose median's 95% interval lies wholly above CONTENDER_MARGIN x the median of the fastest strategy that
  may win (autodiff, returning J) is not a contender (judged after MIN_ROUNDS_TO_DROP rounds): it leaves the sweeps
  and is timed on its own, round after round as in a user's loop, in a stretch of STRETCH_S (one round at least) a
  turn, a turn of the strategies that are no contender after each block of the contenders (`_solo_turn`), until it
  has MIN_ROUNDS rounds (MIN_ROUNDS_TO_DROP once those take its share of the window and FEW_ROUNDS_S) and SOLO_S of
  them at least, with the wider interval of its few rounds; a turn is set aside like a block; the rounds that
  decided it are not kept (timed beside heavier strategies, and selected for being slow) unless they are long calls
  far from the margin (`_far_beyond`);
- once a strategy is no contender, the contenders start again alone: their rounds so far are not kept (heavy
  neighbours slow quick calls for milliseconds: caches, the allocator, spinning OpenMP threads; in a user's loop the
  call runs beside itself), and they run side by side (rounds of one sweep are paired in the verdict) for target_s
  each, or until each has MIN_ROUNDS rounds and an interval within ±PRECISION of its median.
Each round of a quick strategy starts with LEAD_IN_S of untimed calls: after another strategy, caches, the allocator and
the OpenMP threads (which spin for milliseconds after a parallel region) slow the first calls. Rounds and lead-ins are
sized by a warm-up of MIN_ROUND_S of calls, not by the validation call. A strategy whose single call is longer than
WARM_CALL_S was warmed by its validation call and gets no warm-up and no lead-in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import stats
from bench.harness import machine, measure
from bench.schema import fmt_margin

MIN_ROUND_S = 2e-3  # a round lasts at least this long: far above perf_counter's resolution and call overhead
LEAD_IN_S = 2e-3  # untimed calls before each round of a quick strategy: the caches, the allocator and the OpenMP
# worker threads are left as the previous strategy left them, and the first calls after another strategy run slower
SLOW_FIRST_CALLS = 4  # a warm-up's first call this many rounds long sizes the rounds alone
WARM_CALL_S = 0.05  # a call this long was warmed by the validation call: no warm-up round, no lead-in
BLOCK_S = 0.2  # rounds are kept or set aside in blocks this long (the kernel counts CPU time in 10 ms ticks)
MIN_ROUNDS = 7  # rounds before a contender may stop for precision, and every strategy's least
MIN_ROUNDS_TO_DROP = 3  # rounds before a strategy may be dropped as no contender
FEW_ROUNDS_S = 0.3  # a slow call stops at MIN_ROUNDS_TO_DROP rounds only once they took this long: three rounds of
# a 45 ms call are one moment of the machine (linearize_batched: x0.90-1.18 what a fresh process measured)
SOLO_S = 0.05  # a strategy timed on its own is timed this long at least (its share of the window, if less): seven
# 2 ms rounds are one moment of the machine (jacobian_sum and func_sum_jacrev, timed one after the other at B = 1,
# both read x1.85 in one run and x1.0 in the next, beside unchanged strategies)
PRECISION = 0.02  # a contender is precise when its median's 95% interval is within ±2% (one process)
MAX_ROUNDS = 400
MIN_SET_ASIDE = 3  # a shape sets aside at least this many disturbed blocks, at most half of its blocks
EPISODE_WAITS = 3  # past its share of set-aside blocks, a shape waits out a slow episode at most this often
FAR_MARGIN = 3.0  # a no-contender's deciding rounds all this many times the fastest's median: not selected by noise
STRETCH_S = 0.01  # a strategy timed on its own is timed in stretches this long (one round at least), one a turn


@dataclass
class Entry:
    """One strategy of the shape being timed."""

    name: str
    call: Callable[[], object]  # one call of the case: fn(model, x) in the case's mode
    one_call_s: float  # the first estimate of one call (the validation call, or the call after compiling)
    eligible: bool = True  # may win the shape: an autodiff strategy whose result is J (not the closed form, not a sum)
    iterations: int = 1
    lead_in: int = 0  # untimed calls before each round
    rounds: list[float] = field(default_factory=list)  # seconds per call of each kept round, in time order
    round_sweeps: list[int] = field(default_factory=list)  # the sweep each kept round ran in: rounds of two
    # strategies with the same sweep ran side by side (the pairs of a verdict)
    spent_s: float = 0.0  # wall time of its rounds, set-aside ones included
    set_aside: int = 0  # rounds timed during a disturbance and not kept
    screened: int = 0  # a contender's rounds timed beside strategies that turned out no contenders, not kept
    raced: int | None = None  # a strategy found no contender: the rounds that decided it (None: none)
    far: bool = False  # ... long calls far beyond the margin (`_far_beyond`)
    race_kept: int = 0  # how many of them are kept (timed at the usual speed: `_keep_far_rounds`)
    stretches: int = 0  # stretches of rounds timed on its own and kept (one a turn: `_solo_turn`)
    unstable: str = ""  # why its own rounds (timed on its own) were kept under disturbance
    contender: bool = True  # False once it is surely more than CONTENDER_MARGIN slower than the fastest
    done: bool = False
    error: BaseException | None = None  # what a call raised while timed (out of memory, a recompile, ...)

    def __post_init__(self) -> None:
        self.size_rounds(self.one_call_s)

    def size_rounds(self, one_call_s: float) -> None:
        """Calls per round and lead-in calls for a call of `one_call_s`."""
        one_call = max(one_call_s, 1e-7)
        self.one_call_s = one_call_s
        self.iterations = max(1, math.ceil(MIN_ROUND_S / one_call))
        self.lead_in = math.ceil(LEAD_IN_S / one_call) if one_call < WARM_CALL_S else 0

    def median(self) -> float:
        return stats.median_order_ci(self.rounds)[0] if self.rounds else math.inf


@dataclass
class ShapeTiming:
    """The result of one shape's window: each entry with its rounds, and what disturbed the window."""

    entries: list[Entry]
    unstable: str = ""  # why kept rounds were timed under disturbance ("" if none were)
    blocks: int = 0
    blocks_set_aside: int = 0
    sweeps: int = 0  # sweeps run so far, set-aside ones included
    alone_from: int | None = None  # the sweep from which the contenders ran alone (None: no strategy was dropped)
    episode_waits: int = 0  # waits for a long slow episode of the machine to pass
    opened_by: dict[int, int] = field(default_factory=dict)  # sweep -> its block's calibration (Calibration.history)
    solo_turns: int = 0  # turns of the strategies timed on their own (`_solo_turn`), set-aside ones included
    solo_turns_set_aside: int = 0


def time_shape(entries: list[Entry], window_s: float, calibration: machine.Calibration,
               settler: machine.Settler, guard_s: float, seed: int = 0) -> ShapeTiming:
    """Time `entries` interleaved for about `window_s` of kept rounds (longer while a contender lacks MIN_ROUNDS);
    `guard_s` bounds the whole window against a hang (CaseTimeout)."""
    order = random.Random(seed)
    result = ShapeTiming(entries)
    started, aside_s = time.perf_counter(), 0.0
    share_s = window_s / max(len(entries), 1)  # one strategy's share of the window
    with measure.time_limit(guard_s, "the timed rounds"):
        _warm_up([e for e in entries if e.one_call_s < WARM_CALL_S], order)
        slow = None  # the calibration that opens the next block, when the last stretch on their own made it
        while True:
            if result.alone_from is None and any(not e.contender for e in entries):
                window_s = _alone(entries, result, window_s / len(entries))
                started, aside_s = time.perf_counter(), 0.0
            racing = [e for e in entries if e.contender and not e.done and e.error is None]
            if racing and _window_closed(racing, time.perf_counter() - started - aside_s, window_s, share_s):
                for e in racing:
                    e.done = True
                racing = []
            if racing:
                block_started = time.perf_counter()
                block, disturbed = _block(racing, calibration, order, result, slow)
                result.blocks += 1
                if _measure_again(disturbed, result.blocks_set_aside, max(MIN_SET_ASIDE, result.blocks // 2),
                                  calibration, settler, result):
                    result.blocks_set_aside += 1
                    for e in racing:
                        e.set_aside += len(block[e.name])
                    aside_s += time.perf_counter() - block_started
                else:
                    if disturbed:
                        result.unstable = disturbed
                    for e in racing:
                        e.round_sweeps += [sweep for sweep, _ in block[e.name]]
                        e.rounds += [seconds for _, seconds in block[e.name]]
                    _judge([e for e in racing if e.error is None], alone=result.alone_from is not None,
                           share_s=share_s)
            solos = [e for e in entries if not e.contender and not e.done and e.error is None]
            if not racing and not solos:
                break
            solo_started = time.perf_counter()
            slow = _solo_turn(solos, calibration, settler, result, order, share_s) if solos else None
            aside_s += time.perf_counter() - solo_started  # not the shared window's time
    return result


def _warm_up(entries: list[Entry], order: random.Random) -> None:
    """Calls of each entry for at least MIN_ROUND_S, not kept: other strategies ran since the validation call
    (caches, allocator). Their time per call sizes the entry's rounds: the validation call is a poor estimate of a
    quick call (it is timed with the memory measurement around it: a collection, malloc_trim, /proc reads), and
    sized by it a 0.1 ms call got 1-call rounds, each timed right after another strategy's round (x1.3 what the
    same call costs back to back)."""
    order.shuffle(entries)
    for e in entries:
        start = time.perf_counter()
        try:
            e.size_rounds(_seconds_per_call(e.call))
        except measure.CaseTimeout:
            raise
        except Exception as exc:
            e.error, e.done = exc, True
        finally:
            e.spent_s += time.perf_counter() - start


def _seconds_per_call(call: Callable[[], object]) -> float:
    """One call, then (unless it alone took SLOW_FIRST_CALLS x MIN_ROUND_S: the round is one call anyway) calls
    until MIN_ROUND_S has passed: their seconds per call."""
    start = measure.synced_clock()
    call()
    first = measure.synced_clock() - start
    if first >= SLOW_FIRST_CALLS * MIN_ROUND_S:
        return first
    calls, start = 0, measure.synced_clock()
    while (elapsed := measure.synced_clock() - start) < MIN_ROUND_S or not calls:
        call()
        calls += 1
    return elapsed / calls


def _round(e: Entry, lead_in: bool = True) -> list[float]:
    """One round of an entry, after its lead-in ([] when its call raised: the entry stops with the error)."""
    start = time.perf_counter()
    try:
        for _ in range(e.lead_in if lead_in else 0):
            e.call()
        return measure.time_rounds(e.call, e.iterations, 1)
    except measure.CaseTimeout:
        raise  # the window's own guard: not this entry's failure
    except Exception as exc:
        e.error, e.done = exc, True
        return []
    finally:
        e.spent_s += time.perf_counter() - start


def _block(active: list[Entry], calibration: machine.Calibration, order: random.Random, result: ShapeTiming,
           slow: str | None = None) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """Sweeps of the active entries for at least BLOCK_S: each entry's (sweep, seconds per call) rounds, and why
    the block was disturbed ("" if it was not). A pause before the calibration lets the last round's OpenMP workers
    stop spinning, so the calibration measures the machine rather than the last strategy. `slow`: the verdict of a
    calibration made just before (closing a turn of the strategies timed on their own), so none is made again."""
    slow = calibration.check() if slow is None else slow
    before = machine.snapshot()
    block: dict[str, list[tuple[int, float]]] = {e.name: [] for e in active}
    first = result.sweeps
    while True:
        sweep = [e for e in active if e.error is None]
        order.shuffle(sweep)
        result.opened_by[result.sweeps] = len(calibration.history) - 1
        for e in sweep:
            block[e.name] += [(result.sweeps, seconds) for seconds in _round(e)]
        result.sweeps += 1
        if not sweep or time.perf_counter() - before.wall >= BLOCK_S or result.sweeps - first >= MAX_ROUNDS:
            break
    return block, machine.disturbance(before, machine.snapshot()) or slow  # other processes: the more specific reason


def _measure_again(disturbed: str, set_aside: int, may_set_aside: int, calibration: machine.Calibration,
                   settler: machine.Settler, result: ShapeTiming) -> str:
    """Whether rounds timed under `disturbed` (a shape's block, or a stretch of a strategy timed on its own) are set
    aside and measured again: "" (no: they are kept, and named), "again" (fewer than `may_set_aside` were set aside
    so far), "after a wait" (past those, a slow episode of the machine was waited out: it runs at its usual speed
    now). Before measuring again after other processes took the CPUs, wait until they are gone; a short slow episode
    of the machine passes on its own, and a long one is waited out once the share of set-asides is spent."""
    if not disturbed:
        return ""
    if set_aside < may_set_aside:
        verdict = "again"
    elif _waited_out(disturbed, calibration, settler, result):
        verdict = "after a wait"
    else:
        return ""
    if not disturbed.startswith(machine.SLOW_MACHINE):
        settler.settle()
    return verdict


def _waited_out(disturbed: str, calibration: machine.Calibration, settler: machine.Settler,
                result: ShapeTiming) -> bool:
    """A slow episode that outlasts the blocks a shape may set aside: wait for the machine's usual speed (at most
    EPISODE_WAITS times a shape, within the process's waiting budget) rather than keep rounds timed in it; whether
    the machine came back, so the block is set aside and measured again."""
    if not disturbed.startswith(machine.SLOW_MACHINE) or result.episode_waits >= EPISODE_WAITS:
        return False
    result.episode_waits += 1
    return settler.wait_for_usual_speed(calibration)


def _solo_turn(solos: list[Entry], calibration: machine.Calibration, settler: machine.Settler,
               result: ShapeTiming, order: random.Random, share_s: float) -> str:
    """One turn of the strategies found no contender: a stretch of each (`_stretch`), in a shuffled order, between
    two calibrations; the closing calibration's verdict (it opens the next block). A strategy is timed on its own,
    round after round as in a user's loop, in one stretch a turn, a turn after each block of the contenders, until it
    has enough rounds over SOLO_S (`_solo_has_its_rounds`): its rounds are spread over the shape's window
    and no moment of the machine sets its number. Timed in one stretch, linearize_batched's 45-90 ms rounds and
    grad_loop's 8 ms ones read x1.5-1.9 what a fresh process measured (four to seven rounds, one slow moment); a
    call's slow moments here cluster (1,006 samples 0.12 s apart, four strategies: a sample over x1.3 the call's usual
    time was followed by another 37-54% of the time, 0.5 s later 25-31%, 1-2 s later 24-30%, against 12-16% overall).
    The rounds that decided it are not kept (but for long calls far from the margin: `_far_beyond`): they were
    timed beside heavier strategies, and they are the rounds that made it look slow (kept, the eager strategies that a
    compiled one beats at B = 2048 read x1.1-1.6 what a fresh process measures). The machine is watched as in the
    shared blocks: a turn with a slow calibration at either end, or with other processes on the CPUs, is set aside
    and timed again (as a shape's blocks are: `_measure_again`; what stays disturbed is kept and named): one
    calibration before the rounds was not enough, linearize_batched's rounds read x1.5-1.7 for stretches of 150 ms
    with no garbage collection in them, after a calibration that found the usual speed."""
    dropped = [e for e in solos if e.raced is None]
    for e in dropped:
        e.raced = len(e.rounds)
    slow_before = calibration.check()  # also the calibration after the block that decided the ones just dropped
    for e in dropped:
        _keep_far_rounds(e, calibration, result)
    kept, before = {e.name: len(e.rounds) for e in solos}, machine.snapshot()
    order.shuffle(solos)
    for e in solos:
        if not _solo_has_its_rounds(e, share_s):
            _stretch(e, result, share_s)
    slow_after = calibration.check()
    disturbed = machine.disturbance(before, machine.snapshot()) or slow_before or slow_after
    result.solo_turns += 1
    again = _measure_again(disturbed, result.solo_turns_set_aside, max(MIN_SET_ASIDE, result.solo_turns // 2),
                           calibration, settler, result)
    for e in solos:
        if again:
            e.set_aside += len(e.rounds) - kept[e.name]
            del e.rounds[kept[e.name]:], e.round_sweeps[kept[e.name]:]
        elif len(e.rounds) > kept[e.name]:
            e.stretches += 1
            e.unstable = disturbed or e.unstable
        if e.error is not None or _solo_has_its_rounds(e, share_s):
            e.done = True
    result.solo_turns_set_aside += bool(again)
    return "" if again == "after a wait" else slow_after  # a wait ends at the usual speed


def _keep_far_rounds(e: Entry, calibration: machine.Calibration, result: ShapeTiming) -> None:
    """Of the rounds that found a strategy no contender, keep only long calls far from the margin, timed between two
    calibrations at the usual speed (the one opening their block, and the one just made)."""
    at_usual = [i for i, sweep in enumerate(e.round_sweeps)
                if e.far and calibration.usual_around(result.opened_by[sweep])]
    e.rounds, e.round_sweeps = [e.rounds[i] for i in at_usual], [e.round_sweeps[i] for i in at_usual]
    e.race_kept = len(at_usual)


def _far_beyond(e: Entry, fastest: float) -> bool:
    """Whether the rounds that found a strategy no contender may be kept as its first rounds on its own: single calls
    of BLOCK_S or more (each in a block of its own: moments of the machine apart), every one FAR_MARGIN x the
    fastest's median or more. A neighbour's lingering caches, allocator and OpenMP threads cost such a call a few
    percent at most (the first call after another strategy read x0.97-1.05 its steady call at 10-40 ms on this
    project's VM, against x1.1-1.3 at 1-4 ms), and noise did not select them (a strategy near the margin is dropped on
    its slow rounds). `_keep_far_rounds` keeps those of them timed between two calibrations at the usual speed: a
    block is calibrated before it only, and a long call may meet a slow episode that began after. Not timing them
    again saves most of what a run spends on strategies that are no contender: jacobian_diagonal's 0.3-1.7 s calls,
    three raced and three more timed on their own, were 28 s of raced rounds thrown away in a `default` run. Shorter
    calls share a block, one moment: linearize_batched's four 47 ms deciding rounds, kept, read x1.45 a fresh
    process (B = 1)."""
    return e.iterations == 1 and min(e.rounds) >= max(BLOCK_S, FAR_MARGIN * fastest)


def _stretch(e: Entry, result: ShapeTiming, share_s: float) -> None:
    """Rounds of the entry back to back for STRETCH_S (one round at least; fewer once it has enough), after a
    lead-in: the calibration call or the strategy before them left the caches and the OpenMP threads as another
    strategy would."""
    start, lead_in = time.perf_counter(), True
    while e.error is None and (lead_in or time.perf_counter() - start < STRETCH_S):
        seconds = _round(e, lead_in)
        lead_in = False
        e.rounds += seconds
        e.round_sweeps += [result.sweeps] * len(seconds)  # a sweep of its own: paired with no other strategy
        result.sweeps += 1
        if _solo_has_its_rounds(e, share_s):
            break


def _solo_has_its_rounds(e: Entry, share_s: float) -> bool:
    """A strategy timed on its own has enough rounds (`_enough`), and they took SOLO_S (its share of the window, if
    less) or are MAX_ROUNDS."""
    return _enough(e, share_s) and (sum(e.rounds) * e.iterations >= min(SOLO_S, share_s)
                                    or len(e.rounds) >= MAX_ROUNDS)


def _alone(entries: list[Entry], result: ShapeTiming, per_entry_s: float) -> float:
    """The contenders start again, alone: their rounds timed beside the others are not kept. The window of the
    contenders alone, target_s each."""
    result.alone_from = result.sweeps
    contenders = [e for e in entries if e.contender and not e.done]
    for e in contenders:
        e.screened += len(e.rounds)
        e.rounds, e.round_sweeps = [], []
    return per_entry_s * max(len(contenders), 1)


def _enough(e: Entry, share_s: float) -> bool:
    """MIN_ROUNDS rounds, or MIN_ROUNDS_TO_DROP when they already took the strategy's share of the window and
    FEW_ROUNDS_S (a slow call: a few rounds say enough about it, and each costs much)."""
    return len(e.rounds) >= MIN_ROUNDS or (len(e.rounds) >= MIN_ROUNDS_TO_DROP
                                           and sum(e.rounds) * e.iterations >= max(share_s, FEW_ROUNDS_S))


def _judge(entries: list[Entry], alone: bool, share_s: float) -> None:
    """Drop the strategies that surely are no contenders; stop the contenders once they all are precise (not when
    one was just dropped before the contenders ran alone: they start again alone, their rounds so far not kept)."""
    if not entries:
        return
    fastest = min((e.median() for e in entries if e.eligible), default=min(e.median() for e in entries))
    for e in entries:
        if e.done or not e.contender or len(e.rounds) < MIN_ROUNDS_TO_DROP:
            continue
        _, low, _ = stats.median_order_ci(e.rounds)
        if not stats.is_contender(low, fastest):
            e.contender = False
            e.far = _far_beyond(e, fastest)
    contenders = [e for e in entries if e.contender and not e.done]
    if (alone or all(e.contender for e in entries)) and contenders and all(_precise(e) for e in contenders):
        for e in contenders:
            e.done = True
    for e in entries:
        if len(e.rounds) >= MAX_ROUNDS:
            e.done = True


def _precise(e: Entry) -> bool:
    if len(e.rounds) < MIN_ROUNDS:
        return False
    median, low, high = stats.median_order_ci(e.rounds)
    return high - low <= 2 * PRECISION * median


def _window_closed(active: list[Entry], kept_s: float, window_s: float, share_s: float) -> bool:
    """Past the window (counting the time of kept blocks), and every strategy still running has its minimum."""
    return kept_s >= window_s and all(_enough(e, share_s) for e in active)


def disturbed(e: Entry, result: ShapeTiming) -> str:
    """Why an entry's kept rounds were timed under disturbance ("" if they were not): the shape's window's, or for a
    strategy timed on its own once found no contender, its own rounds'."""
    return e.unstable if e.raced is not None else result.unstable


def note(e: Entry) -> str:
    """What the record's message says about how an entry was timed ("" when plainly)."""
    notes = []
    if not e.contender:
        stretches = f" in {e.stretches} stretches" if e.stretches > 1 else ""
        alone = (f" on its own{stretches}, after {e.raced} beside the others decided it" if e.raced
                 else f" on its own{stretches}, not raced again (the first process found it far behind the fastest)"
                 if e.raced == 0 else "")
        if e.race_kept and e.race_kept == len(e.rounds):
            alone = " beside the others, the ones that decided it"
        elif e.race_kept:
            alone = (f", {e.race_kept} of them beside the others (they decided it), {len(e.rounds) - e.race_kept} on "
                     f"its own{stretches}")
        notes.append(f"{len(e.rounds)} rounds{alone}: surely more than {fmt_margin(stats.CONTENDER_MARGIN)} slower "
                     "than the shape's fastest, timed less")
    if e.set_aside:
        notes.append(f"{e.set_aside} rounds timed during a disturbance set aside and measured again")
    if e.screened:
        notes.append(f"timed alone with the other contenders after {e.screened} rounds beside the shape's slower "
                     "strategies")
    return "; ".join(notes)
