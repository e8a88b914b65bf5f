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
import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import strategies
from bench import rules, verdicts
from bench.harness import compiling, machine, measure, modes, reference, second_order, timing
from bench.harness.shapes import PreparedShape, ShapeCache
from bench.harness.skips import SkipPolicy, predicted_memory
from bench.schema import CaseRecord, case_id, is_jacobian
from bench.spec import models
from bench.spec.grid import Case
from bench.spec.plan import RunPlan
from strategies import Strategy, Unsupported

Call = Callable[[nn.Module, Tensor], object]  # what one timed call runs: fn(model, x)
# told of each case as soon as its record is final in this process, and whether its failure predicts larger shapes'
Done = Callable[[CaseRecord, bool], None]
FORWARD = "model(x)"  # the forward pass, timed among the strategies (the entry's name; never a strategy's)
SETTLE_TOTAL_S = 120.0  # a run waits at most this long in all, per worker process, for other processes' load to pass


@dataclass(frozen=True)
class Outcome:
    """What measuring one case found: its status, why, and the numbers that became known on the way."""

    status: str  # "ok" before timing means valid, to be timed
    message: str = ""
    predicts_larger: bool = False  # a failure that every larger shape of the same strategy would repeat
    check: reference.Check | None = None
    setup_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    one_call_s: float | None = None  # the validation call's time (after compiling, for a compiled strategy)
    entry: timing.Entry | None = None  # its rounds, once timed
    unstable: str = ""  # why its rounds were timed under disturbance
    wall_s: float = 0.0


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
        compiles): (output, peak bytes, seconds, the warnings it raised). One retry of a timeout, so a moment of
        load on a shared machine is not recorded as a timeout (which would also skip every larger shape)."""
        limit = self.plan.grid.budget.compile_s if strategy.compiled else self.plan.time_budget_s
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for attempt in (1, 2):
                start = measure.synced_clock()
                try:
                    output, peak = measure.call_with_peak(lambda: within(call, shape, limit), shape.device)
                    break
                except measure.CaseTimeout:
                    if attempt == 2:
                        raise
            seconds = measure.synced_clock() - start
        return output, peak, seconds, case_warnings(caught)

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

    def retime_shape(self, case: Case, device: str, records: list[CaseRecord], done: Done) -> list[CaseRecord]:
        """The second process: the shape's contenders, and the strategies near them, timed together again; their
        rounds added as this process's, and who is a contender judged again on them."""
        contenders = to_retime(records)
        if not contenders:
            return []
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
                                        eligible=may_win(strategy, case)))
        result = self._window(shape, [*entries, self._forward_entry(shape)]) if entries else timing.ShapeTiming([])
        by_name = {e.name: e for e in entries}
        forward_s = self.forward.median() if self.forward is not None and self.forward.rounds else None
        updated = []
        for r in contenders:
            new = added_process(r, by_name.get(r.strategy), result, failed.get(r.strategy, ""), forward_s)
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


def to_retime(records: list[CaseRecord]) -> list[CaseRecord]:
    """The timed strategies of a shape the second process times again: the contenders and those near them."""
    timed_ok = [r for r in records if r.status == "ok" and r.round_times_s]
    winners = [r.time_median_s for r in timed_ok if r.contender and rules.eligible(r)]
    fastest = min(winners, default=min((r.time_median_s for r in timed_ok), default=0.0))
    return [r for r in timed_ok if r.contender or r.time_median_s <= RETIME_MARGIN * fastest]


def timed(outcome: Outcome, entry: timing.Entry, result: timing.ShapeTiming) -> Outcome:
    """The outcome of a valid case after its window: ok with its rounds, or the failure that stopped its rounds."""
    wall_s = outcome.wall_s + entry.spent_s
    if entry.error is not None:
        failed = failure(entry.error, None, check=outcome.check, setup_s=outcome.setup_s, warnings=outcome.warnings)
        return dataclasses.replace(failed, wall_s=wall_s)
    estimate = [outcome.check.message] if outcome.check is not None and outcome.check.ok else []  # an estimator's error
    notes = estimate + [timing.note(entry)] + ([f"unstable: {result.unstable}"] if result.unstable else [])
    return dataclasses.replace(outcome, entry=entry, wall_s=wall_s, message="; ".join(n for n in notes if n),
                               unstable=result.unstable)


def added_process(record: CaseRecord, entry: timing.Entry | None, result: timing.ShapeTiming, problem: str,
                  forward_s: float | None = None) -> CaseRecord:
    """A record with the rounds of one more process (or, when that process could not time it, with why), and that
    process's forward pass."""
    if forward_s is not None:
        record = with_forward(record, forward_s)
    if entry is None or entry.error is not None or not entry.rounds:
        why = problem or (f"second process: {type(entry.error).__name__}: {measure.first_line(entry.error)}"
                          if entry is not None and entry.error is not None else "second process: no rounds kept")
        return dataclasses.replace(record, message="; ".join(m for m in (record.message, why) if m))
    rounds = record.round_times_s + entry.rounds
    process_rounds = (record.process_rounds or [len(record.round_times_s)]) + [len(entry.rounds)]
    parts = record.message.split("; ")
    # an estimator's error stays in its record
    estimate = [m for m in parts if m.startswith(second_order.ESTIMATE_NOTE)]
    timed_note = timing.note(entry) or "; ".join(m for m in parts if m not in estimate)
    message = "; ".join(m for m in (*estimate, timed_note, f"second process unstable: {result.unstable}"
                                    if result.unstable else "") if m)
    return dataclasses.replace(
        record, round_times_s=rounds, process_rounds=process_rounds,
        round_sweeps=record.round_sweeps + entry.round_sweeps, contender=record.contender or entry.contender,
        rounds_set_aside=(record.rounds_set_aside or 0) + entry.set_aside, unstable=record.unstable
        or bool(result.unstable), message=message, wall_s=round((record.wall_s or 0) + entry.spent_s, 4),
        **verdicts.timing_fields(rounds, process_rounds, pooled=0.0))


def with_forward(record: CaseRecord, forward_s: float) -> CaseRecord:
    """The record with one more process's forward median; forward_median_s the geometric mean over processes."""
    medians = [*record.forward_process_s, forward_s]
    return dataclasses.replace(record, forward_process_s=medians,
                               forward_median_s=math.exp(sum(math.log(m) for m in medians) / len(medians)))


def failure(exc: BaseException, shape: PreparedShape | None, **found) -> Outcome:
    """The status of an exception raised by a strategy's call."""
    if isinstance(exc, Unsupported):
        return Outcome("unsupported", str(exc), **found)
    if isinstance(exc, measure.CaseTimeout):
        # only a single call over the budget predicts that larger shapes will time out too
        return Outcome("timeout", str(exc), predicts_larger=exc.what == "one call", **found)
    if measure.is_out_of_memory(exc):
        if shape is not None:
            measure.free(shape.device)
        return Outcome("oom", measure.first_line(exc), predicts_larger=True, **found)
    note = _one_sample_note(shape) if shape is not None else ""
    return Outcome("error", f"{type(exc).__name__}: {measure.first_line(exc)}{note}", **found)


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


def validate(output: object, ref: reference.Reference | second_order.SecondOrderReference, strategy: Strategy,
             case: Case) -> reference.Check:
    """The first call's output against the float64 reference of the case's quantity: J (or J.sum(1)), H or the
    Laplacian, or the parameter gradient in train mode (of the PINN step for second order); the tolerance follows
    the case's dtype. An estimator passes within its noise and its check's message states its error."""
    dtype = getattr(torch, case.dtype)
    if case.quantity != "jacobian":
        if case.mode == "train":
            return second_order.validate_pinn_gradient(output, ref.pinn_gradient, dtype, strategy.estimator)
        return second_order.validate_second_order(output, ref, case.quantity, dtype, strategy.estimator)
    if case.mode == "train":
        expected = ref.output_sum_penalty_gradient if strategy.returns == "output_sum" else ref.penalty_gradient
        return reference.validate_gradient(output, expected, dtype)
    return reference.validate(output, ref.jacobian, strategy.returns, dtype)


IGNORED_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def case_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct warnings a call raised (first lines), e.g. torch.func's "There is a performance drop because we
    have not yet implemented the batching rule for ...": a slow fallback that explains a slow number. Deprecation
    notices say nothing about the case and are left out."""
    found = (str(w.message).strip().splitlines()[0][:240] for w in caught
             if not issubclass(w.category, IGNORED_WARNINGS) and str(w.message).strip())
    return list(dict.fromkeys(found))


def case_record(strategy: Strategy, case: Case, device: str, outcome: Outcome, shape: PreparedShape | None,
                predicted_bytes: int, forward_s: float | None = None) -> CaseRecord:
    """The record of a case: who and where, then what its outcome measured (its interval provisional until the run
    is finished: bench/verdicts.py adds the noise of the other process)."""
    check, entry = outcome.check, outcome.entry
    rounds = {}
    if entry is not None:
        rounds = verdicts.timing_fields(entry.rounds, [len(entry.rounds)], pooled=0.0) | {
            "round_times_s": entry.rounds, "process_rounds": [len(entry.rounds)], "round_sweeps": entry.round_sweeps,
            "iterations": entry.iterations, "contender": entry.contender, "rounds_set_aside": entry.set_aside}
    prepared = shape is not None and shape.model is not None
    return CaseRecord(
        strategy=strategy.name, model=case.model, device=device, dtype=case.dtype, **case.sizes._asdict(),
        mode=case.mode, quantity=case.quantity, status=outcome.status, message=outcome.message, **rounds,
        unstable=bool(outcome.unstable),
        forward_median_s=forward_s, forward_process_s=[forward_s] if forward_s else [],
        coupled=shape.coupled if shape else None,
        module_training=shape.model.training if prepared else None,
        peak_memory_bytes=outcome.peak_memory_bytes if outcome.status == "ok" else None,
        predicted_memory_bytes=predicted_bytes,
        max_abs_error=check.max_abs_error if check else None, tolerance=check.tolerance if check else None,
        setup_s=outcome.setup_s, warnings=outcome.warnings, returns=strategy.returns,
        is_jacobian=is_jacobian(strategy.returns, case.sizes.out_dim),
        independent_samples=strategy.independent_samples, estimator=strategy.estimator, compiled=strategy.compiled,
        closed_form=strategy.closed_form, peer=strategy.peer,
        summary=strategy.summary, cost=strategy.cost, sweeps=list(case.sweeps),
        case_id=case_id(strategy.name, device, case.shape_id), wall_s=round(outcome.wall_s, 4))


def _one_sample_note(shape: PreparedShape) -> str:
    """Why a strategy may have failed: the model cannot run one sample, which per-sample strategies feed it."""
    if shape.model is None:
        return ""
    problem = models.run_problem(shape.model, shape.x[:1], shape.case.sizes.out_dim)
    return f" (the model fails on a one-sample batch, which per-sample strategies feed it: {problem})" if problem \
        else ""
