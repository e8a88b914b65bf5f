"""One shape (every strategy of it, on one device, in one mode) -> one CaseRecord per strategy, whatever happens.

Runs in a child of a worker process (bench/harness/worker.py), one shape per child. The first pass measures a shape
in this order: the shape every strategy shares (model, input, float64 reference: bench/harness/shapes.py); each
strategy's first call, validated against the reference, its peak memory measured on the way (for a compiled strategy
the first call compiles: its time is `setup_s`, and the call after it gives the memory); then every valid strategy
and the forward pass `model(x)` timed together, interleaved (bench/harness/timing.py). The second pass re-times the
contenders of the shape and its forward pass in another process (`retime_shape`). The cases a smaller shape already
predicts to fail, or over the memory budget, never reach a worker (the host decides them: bench/run/host.py).
No exception escapes: every failure becomes a status.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import time
import warnings
import zlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

import strategies
from bench import rules
from bench.harness import compiling, machine, measure, modes, reference, second_order, timing
from bench.harness.outcome import (
    Outcome,
    added_process,
    case_record,
    case_warnings,
    failure,
    process_set_aside,
    replaced_process,
    timed,
)
from bench.harness.shapes import PreparedShape, ShapeCache
from bench.harness.skips import SkipPolicy, predicted_memory
from bench.schema import CaseRecord, is_jacobian
from bench.spec.grid import Case
from bench.spec.plan import RunPlan
from strategies import Strategy

Call = Callable[[nn.Module, Tensor], object]  # what one timed call runs: fn(model, x)
# told of each case as soon as its record is final in this process, and whether its failure predicts larger shapes'
Done = Callable[[CaseRecord, bool], None]
FORWARD = "model(x)"  # the forward pass, timed among the strategies (the entry's name; never a strategy's)
SETTLE_TOTAL_S = 120.0  # a run waits at most this long in all, per worker process, for other processes' load to pass


class ShapeRunner:
    """Measures the shapes of a planned run, one call of `measure_shape` (or `retime_shape`) per shape."""

    def __init__(self, plan: RunPlan, phases: measure.Phases, run_usual_s: float | None = None,
                 settle_left_s: float = SETTLE_TOTAL_S):
        self.plan = plan
        self.phases = phases
        budget = plan.grid.budget
        self.skips = SkipPolicy(plan.memory_budget_bytes, budget.memory_fraction)
        self.settler = machine.Settler(budget.settle_s, settle_left_s)  # what the run's worker has left of it
        self.calibration = machine.Calibration(run_usual_s)  # a second process is held to the first one's speed
        self.shapes = ShapeCache(plan.model_defs, plan.strategy_names, plan.time_budget_s, self.skips.budget, phases)
        self.forward: timing.Entry | None = None  # the shape's forward pass, once timed

    def measure_shape(self, case: Case, device: str, names: list[str], done: Done,
                      calling: Callable[[str | None], None] = lambda name: None) -> list[CaseRecord]:
        """The first pass: every named strategy of the shape validated, then the valid ones timed together with the
        forward pass."""
        outcomes: dict[str, Outcome] = {}
        shape = None
        for name in names:
            started = time.perf_counter()
            strategy = strategies.REGISTRY[name]
            try:
                shape = self.shapes.prepare(case, device)
                calling(name)  # a crash or a hang from here on is this strategy's
                self.shapes.warm_up(case, device, [name])
                outcome = self._validate(strategy, shape)
                calling(None)
            except Exception as exc:  # a harness bug must not stop the run either
                outcome = Outcome("error", f"harness: {type(exc).__name__}: {exc}")
            outcomes[name] = dataclasses.replace(outcome, wall_s=time.perf_counter() - started)
            if outcome.status != "ok":
                done(self._record(name, case, device, outcomes[name], shape), outcome.predicts_larger)
        valid = {n: o for n, o in outcomes.items() if o.status == "ok"}
        if valid:
            outcomes |= self._time(shape, valid)
        records = [self._record(n, case, device, outcomes[n], shape) for n in names]
        for name in valid:
            done(records[names.index(name)], outcomes[name].predicts_larger)
        return records

    def _validate(self, strategy: Strategy, shape: PreparedShape) -> Outcome:
        """The first call, validated against the reference; its peak memory and time on the way."""
        if shape.status != "ok":  # out of memory for the reference: larger shapes will be too
            return Outcome(shape.status, shape.message, predicts_larger=shape.status == "oom")
        call = modes.timed_call(strategy, shape.case.mode)
        found: dict = {}  # what is known before a failure: setup_s, warnings, the check
        try:
            with self.phases("compiling" if strategy.compiled else "validation"):
                output, peak, seconds, found["warnings"] = self._first_call(strategy, call, shape)
            if strategy.compiled:
                found["setup_s"] = seconds
                with self.phases("validation"), compiling.no_recompile():
                    start = measure.synced_clock()
                    output, peak = measure.call_with_peak(lambda: within(call, shape, self.plan.time_budget_s),
                                                          shape.device)
                    seconds = measure.synced_clock() - start
            found["check"] = validate(output, shape.reference, strategy, shape.case)
            del output
            if not found["check"].ok:
                return Outcome("wrong", found["check"].message, **found)
            return Outcome("ok", peak_memory_bytes=peak, one_call_s=seconds, **found)
        except Exception as exc:
            return failure(exc, shape, **found)

    def _first_call(self, strategy: Strategy, call: Call, shape: PreparedShape
                    ) -> tuple[object, int | None, float, list[str]]:
        """The validation call, under the time budget (the compile budget for a compiled strategy, whose first call
        compiles): (output, peak bytes, seconds, the warnings it raised and the graph breaks of its compile). One
        retry of a timeout under a limit shorter than RETRY_BELOW_S, so a moment of load on a shared machine is not
        recorded as a timeout (which would also skip every larger shape)."""
        limit = self.plan.grid.budget.compile_s if strategy.compiled else self.plan.time_budget_s
        with warnings.catch_warnings(record=True) as caught, compiling.graph_breaks(strategy.compiled) as breaks:
            warnings.simplefilter("always")
            tries = 2 if limit < RETRY_BELOW_S else 1
            for attempt in range(1, tries + 1):
                start = measure.synced_clock()
                try:
                    output, peak = measure.call_with_peak(lambda: within(call, shape, limit), shape.device)
                    break
                except measure.CaseTimeout:
                    if attempt == tries:
                        raise
            seconds = measure.synced_clock() - start
        return output, peak, seconds, case_warnings(caught) + breaks

    def _time(self, shape: PreparedShape, valid: dict[str, Outcome]) -> dict[str, Outcome]:
        """Every valid strategy of the shape timed together with the forward pass (bench/harness/timing.py)."""
        entries = [timing.Entry(name, functools.partial(modes.timed_call(strategies.REGISTRY[name], shape.case.mode),
                                                        shape.model, shape.x), o.one_call_s,
                                eligible=may_win(strategies.REGISTRY[name], shape.case))
                   for name, o in valid.items()]
        result = self._window(shape, [*entries, self._forward_entry(shape)])
        return {e.name: timed(valid[e.name], e, result) for e in entries}

    def _forward_entry(self, shape: PreparedShape) -> timing.Entry:
        """model(x) under no_grad, timed like a strategy among the strategies (what "× forward" divides by); never
        a contender for the shape."""
        def forward() -> object:
            with torch.no_grad():
                return shape.model(shape.x)

        forward()
        start = measure.synced_clock()
        forward()
        self.forward = timing.Entry(FORWARD, forward, measure.synced_clock() - start, eligible=False)
        return self.forward

    def _window(self, shape: PreparedShape, entries: list[timing.Entry]) -> timing.ShapeTiming:
        """The shape's measuring window: target_s per strategy. A recompile while timed, or the guard against a
        hang, is the error of the strategies it concerns."""
        window_s = self.plan.grid.budget.target_s * len(entries)
        guard_s = max(60.0, 20 * window_s + self.plan.time_budget_s * len(entries) * timing.MIN_ROUNDS)
        compiled = [e for e in entries if e.name != FORWARD and strategies.REGISTRY[e.name].compiled]
        result = timing.ShapeTiming(entries)
        gc.collect()  # what validating and compiling left for the collector, collected before the first round
        try:
            with self.phases("timing"), compiling.no_recompile(bool(compiled)):
                result = timing.time_shape(entries, window_s, self.calibration, self.settler, guard_s,
                                           seed=zlib.crc32(shape.case.shape_id.encode()))
        except compiling.Recompiled as exc:
            for e in compiled:
                e.error = e.error or exc
        except measure.CaseTimeout as exc:
            for e in entries:
                if len(e.rounds) < timing.MIN_ROUNDS_TO_DROP:
                    e.error = e.error or exc
        return result

    def retime_shape(self, case: Case, device: str, records: list[CaseRecord], done: Done, first_slow: str = ""
                     ) -> list[CaseRecord]:
        """The second process: the shape's contenders, and the strategies near them, timed together again; their
        rounds added as this process's (or replacing the first's: `_combining`), and who is a contender judged again
        on them. `first_slow`: why the first process's timing ran slower than the run's usual speed, in hindsight."""
        contenders = to_retime(records, first_slow)
        if not contenders:
            return []
        far = far_behind(contenders)
        self.shapes.warm_up(case, device, [r.strategy for r in contenders])
        shape = self.shapes.prepare(case, device, with_reference=False)
        if shape.status != "ok":
            return []
        entries, failed = [], {}
        for r in contenders:
            strategy = strategies.REGISTRY[r.strategy]
            call = modes.timed_call(strategy, case.mode)
            try:
                with self.phases("compiling" if strategy.compiled else "validation"):
                    within(call, shape, self.plan.grid.budget.compile_s)  # compiles, or warms
                    start = measure.synced_clock()
                    within(call, shape, self.plan.time_budget_s)
                    one_call = measure.synced_clock() - start
            except Exception as exc:
                failed[r.strategy] = f"second process: {type(exc).__name__}: {measure.first_line(exc)}"
                continue
            entries.append(timing.Entry(r.strategy, functools.partial(call, shape.model, shape.x), one_call,
                                        eligible=may_win(strategy, case), contender=r.strategy not in far))
        result = self._window(shape, [*entries, self._forward_entry(shape)]) if entries else timing.ShapeTiming([])
        by_name = {e.name: e for e in entries}
        forward_s = self.forward.median() if self.forward is not None and self.forward.rounds else None
        combine = _combining(contenders, by_name, result, failed, first_slow)
        updated = []
        for r in contenders:
            new = combine(r, by_name.get(r.strategy), forward_s)
            updated.append(new)
            done(new, False)
        return updated

    def _record(self, name: str, case: Case, device: str, outcome: Outcome, shape: PreparedShape | None
                ) -> CaseRecord:
        forward_s = self.forward.median() if self.forward is not None and self.forward.rounds else None
        return case_record(strategies.REGISTRY[name], case, device, outcome, shape,
                           predicted_memory(strategies.REGISTRY[name], case), forward_s)


RETIME_MARGIN = 2.5  # the second process re-times strategies within this factor of the fastest: a process can make
# a strategy look slower than it is (compiled ones most), so a contender in either process is one


def _combining(records: list[CaseRecord], by_name: dict[str, timing.Entry], result: timing.ShapeTiming,
               failed: dict[str, str], first_slow: str = ""
               ) -> Callable[[CaseRecord, timing.Entry | None, float | None], CaseRecord]:
    """How a shape's records take this process's timing, one rule for the whole shape (its records' processes stay
    aligned, as paired ratios need): a first timing run under disturbance (or, seen in hindsight, `first_slow`, at a
    slower machine speed than the run's usual one) is replaced when this one ran undisturbed; this one is set aside
    when it ran under disturbance and the first did not; otherwise its rounds are added."""
    entries = [by_name.get(r.strategy) for r in records]
    complete = not failed and all(e is not None and e.error is None and e.rounds for e in entries)
    disturbed = next((why for e in entries if e is not None and e.rounds and (why := timing.disturbed(e, result))), "")
    first_disturbed = timed_whole(records, first_slow)
    if complete and first_disturbed and not disturbed:
        return lambda r, e, forward_s: replaced_process(r, e, forward_s)
    if complete and disturbed and not first_disturbed:
        return lambda r, e, forward_s: process_set_aside(r, e, disturbed)

    def added(r: CaseRecord, e: timing.Entry | None, forward_s: float | None) -> CaseRecord:
        new = added_process(r, e, result, failed.get(r.strategy, ""), forward_s)
        if first_slow:  # kept: its first timing ran slow, and no later one replaced it
            new = dataclasses.replace(new, unstable=True,
                                      message=f"{new.message}; unstable: first process: {first_slow}")
        return new
    return added


def to_retime(records: list[CaseRecord], first_slow: str = "") -> list[CaseRecord]:
    """The timed strategies of a shape the second process times again: the contenders and those near them; all of
    them when the first timing ran under disturbance or slow (the second, undisturbed, replaces it), but for those
    far behind whose own rounds ran undisturbed (`held_far_behind`)."""
    timed_ok = [r for r in records if r.status == "ok" and r.round_times_s]
    if timed_whole(timed_ok, first_slow):
        held = held_far_behind(timed_ok, first_slow)
        return [r for r in timed_ok if r.strategy not in held]
    fastest = fastest_winner(timed_ok) or min((r.time_median_s for r in timed_ok), default=0.0)
    return [r for r in timed_ok if r.contender or r.time_median_s <= RETIME_MARGIN * fastest]


def timed_whole(records: list[CaseRecord], first_slow: str = "") -> bool:
    """Whether the first timing of a shape ran under disturbance, or (in hindsight, `first_slow`) slow: the second
    process times it whole, and replaces it when it runs undisturbed."""
    return bool(first_slow) or any(r.unstable for r in records)


def fastest_winner(records: list[CaseRecord]) -> float | None:
    """The median of the shape's fastest contender that may win it (None when none)."""
    return min((r.time_median_s for r in records if r.contender and r.time_median_s and rules.eligible(r)),
               default=None)


def far_behind(records: list[CaseRecord]) -> set[str]:
    """The strategies of a shape timed again whole that the first process found no contender and FAR_MARGIN x the
    fastest contender or slower: the second process times them on their own from the start, as it would once they
    lost the race, without racing them again (a slow episode slows a shape's strategies alike; it does not make up a
    factor of three). Racing them cost ~3 rounds each, lead-ins and the contenders' rounds beside them, thrown away."""
    fastest = fastest_winner(records)
    if fastest is None:
        return set()
    return {r.strategy for r in records
            if not r.contender and r.time_median_s and r.time_median_s >= timing.FAR_MARGIN * fastest}


def held_far_behind(records: list[CaseRecord], first_slow: str = "") -> set[str]:
    """Of a shape timed again whole because its shared blocks ran under disturbance, the strategies far behind
    (`far_behind`) whose own rounds, timed on their own between two calibrations at the usual speed and with no other
    process on the CPUs, were kept undisturbed (not `unstable`): their first timing holds and is not timed again. A
    disturbance of the contenders' blocks says nothing of them; a shape found slow in hindsight (`first_slow`: the
    median of all its calibrations, their turns' too) is timed again whole. Few are held in a noisy hour (3 strategies,
    ~1.4 s of calls, in one `default` run): most shapes timed again whole there were slow in hindsight."""
    far = set() if first_slow else far_behind(records)
    return {r.strategy for r in records if r.strategy in far and not r.unstable}


def may_win(strategy: Strategy, case: Case) -> bool:
    """Whether a strategy can be the shape's answer (bench/rules.py)."""
    return rules.may_win(is_jacobian=is_jacobian(strategy.returns, case.sizes.out_dim), estimator=strategy.estimator,
                         closed_form=strategy.closed_form, peer=strategy.peer)


def within(call: Call, shape: PreparedShape, limit: float) -> object:
    """call(model, x) under a time limit, CUDA work included."""
    with measure.time_limit(limit, "one call"):
        output = call(shape.model, shape.x)
        measure.synced_clock()  # wait for queued CUDA work inside the limit
    return output


# A slow moment of this VM lasts seconds: a call that ran past a limit this long (the compile budget, 300 s) is not
# tried again (a user's attention model compiled for vmap_jacrev_compiled ran past 300 s twice: 611 s of a run's 800)
RETRY_BELOW_S = 30.0

COUPLED_HINT = ("the model couples samples (an output row depends on other rows' inputs) and this strategy "
                "assumes independent samples (it sums over the batch, or evaluates one sample at a time)")


def validate(output: object, ref: reference.Reference | second_order.SecondOrderReference, strategy: Strategy,
             case: Case) -> reference.Check:
    """The first call's output against the float64 reference of the case's quantity (`_check`); a per-sample
    strategy that fails on a model that couples samples is told why."""
    check = _check(output, ref, strategy, case)
    if check.ok or not (ref.coupled and strategy.independent_samples):
        return check
    return dataclasses.replace(check, message=f"{check.message}; {COUPLED_HINT}")


def _check(output: object, ref: reference.Reference | second_order.SecondOrderReference, strategy: Strategy,
           case: Case) -> reference.Check:
    """J (or J.sum(1)), H or the Laplacian, or the parameter gradient in train mode (of the PINN step for second
    order); the tolerance follows the case's dtype. An estimator passes within its noise and its check's message
    states its error."""
    dtype = getattr(torch, case.dtype)
    if case.quantity != "jacobian":
        if case.mode == "train":
            return second_order.validate_pinn_gradient(output, ref.pinn_gradient, dtype, strategy.estimator,
                                                       ref.forward_error)
        return second_order.validate_second_order(output, ref, case.quantity, dtype, strategy.estimator)
    if case.mode == "train":
        expected = ref.output_sum_penalty_gradient if strategy.returns == "output_sum" else ref.penalty_gradient
        return reference.validate_gradient(output, expected, dtype, forward_error=ref.forward_error)
    return reference.validate(output, ref.jacobian, strategy.returns, dtype, ref.forward_error)
