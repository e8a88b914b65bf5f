"""One case = one strategy × shape × mode × device -> one CaseRecord, whatever happens.

Order per case: the skip rules (bench/run/skips.py), the shape shared by every strategy (model, input, forward time,
float64 reference: bench/run/shapes.py), the strategy's first call validated against the reference (for a compiled
strategy that call compiles: its time is `setup_s`), the timed rounds (pytest-benchmark's pedantic mode), peak memory
in a separate pass. No exception escapes: every failure becomes a status. After a shape's last case its close
contenders are re-timed interleaved (bench/run/playoff.py).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pytest_benchmark.stats import Stats
from torch import Tensor, nn

import strategies
from bench import stats
from bench.run import compiling, machine, measure, models, modes, playoff, reference
from bench.run.grid import Case
from bench.run.plan import RunPlan
from bench.run.shapes import PreparedShape, ShapeCache
from bench.run.skips import SkipPolicy, predicted_memory
from bench.schema import CaseRecord, VerdictRecord, case_id, is_jacobian
from strategies import Strategy, Unsupported

Call = Callable[[nn.Module, Tensor], object]  # what one timed call runs: fn(model, x)
SETTLE_TOTAL_S = 120.0  # a run waits at most this long in all for other processes' load to pass


@dataclass(frozen=True)
class Timing:
    """The numbers of a timed case, from its per-call time in each round (pytest-benchmark's statistics)."""

    round_times_s: list[float]
    iterations: int
    unstable: bool = False
    message: str = ""  # why it is unstable, and whether it was re-timed

    def fields(self) -> dict[str, Any]:
        summary = Stats()
        for seconds in self.round_times_s:
            summary.update(seconds)
        _, low, high = stats.median_ci(self.round_times_s)
        return {"time_median_s": summary.median, "time_iqr_s": summary.iqr, "time_min_s": summary.min,
                "time_mean_s": summary.mean, "rounds": len(self.round_times_s), "iterations": self.iterations,
                "time_ci_low_s": low, "time_ci_high_s": high, "round_times_s": self.round_times_s,
                "unstable": self.unstable}


@dataclass(frozen=True)
class Outcome:
    """What measuring one case found: its status, why, and the numbers that became known on the way."""

    status: str
    message: str = ""
    predicts_larger: bool = False  # a failure that every larger shape of the same strategy would repeat
    check: reference.Check | None = None
    setup_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    timing: Timing | None = None
    peak_memory_bytes: int | None = None


class CaseRunner:
    """Measures the cases of a planned run, one call of `run_case` per case, shape after shape."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        budget = plan.grid.budget
        self.skips = SkipPolicy(plan.memory_budget_bytes, budget.memory_fraction)
        self.settler = machine.Settler(budget.settle_s, SETTLE_TOTAL_S)
        self.shapes = ShapeCache(plan.model_defs, plan.strategy_names, budget.target_s, plan.time_budget_s,
                                 self.skips.budget, self.settler)

    def run_case(self, benchmark: Any, strategy_name: str, case: Case, device: str) -> CaseRecord:
        """The record of one case, whatever happens: measured, or with the status and message of what stopped it."""
        started = time.perf_counter()
        strategy = strategies.REGISTRY[strategy_name]
        predicted = predicted_memory(strategy, case)
        shape = None
        try:
            skip = self.skips.reason(strategy, case, device, predicted)
            if skip:
                outcome = Outcome(*skip)
            else:
                self.shapes.warm_up(case, device)
                shape = self.shapes.prepare(case, device)
                outcome = self._measure(benchmark, strategy, shape)
        except Exception as exc:  # a harness bug must not stop the run either
            outcome = Outcome("error", f"harness: {type(exc).__name__}: {exc}")
        self.skips.note(strategy, case, device, outcome.status, outcome.predicts_larger)
        return case_record(strategy, case, device, outcome, shape, predicted, time.perf_counter() - started)

    def _measure(self, benchmark: Any, strategy: Strategy, shape: PreparedShape) -> Outcome:
        if shape.status != "ok":  # out of memory for the reference: larger shapes will be too
            return Outcome(shape.status, shape.message, predicts_larger=shape.status == "oom")
        call = modes.timed_call(strategy, shape.case.mode)
        found: dict[str, Any] = {}  # what is known before a failure: the check, setup_s, warnings
        try:
            output, setup_s, found["warnings"] = self._first_call(strategy, call, shape)
            found["setup_s"] = setup_s if strategy.compiled else None
            found["check"] = validate(output, shape.reference, strategy, shape.case)
            del output
            if not found["check"].ok:
                return Outcome("wrong", found["check"].message, **found)
            with compiling.no_recompile(strategy.compiled):
                timing = self._time(benchmark, call, shape)
                peak = measure.peak_memory(lambda: call(shape.model, shape.x), shape.device)
            return Outcome("ok", timing.message, timing=timing, peak_memory_bytes=peak, **found)
        except Unsupported as exc:
            return Outcome("unsupported", str(exc), **found)
        except measure.CaseTimeout as exc:
            # only a single call over the budget predicts that larger shapes will time out too
            return Outcome("timeout", str(exc), predicts_larger=exc.what == "one call", **found)
        except Exception as exc:
            if measure.is_out_of_memory(exc):
                measure.free(shape.device)
                return Outcome("oom", measure.first_line(exc), predicts_larger=True, **found)
            return Outcome("error", f"{type(exc).__name__}: {measure.first_line(exc)}" + _one_sample_note(shape),
                           **found)

    def _first_call(self, strategy: Strategy, call: Call, shape: PreparedShape) -> tuple[object, float, list[str]]:
        """The validation call, under the time budget (the compile budget for a compiled strategy, whose first call
        compiles): (output, seconds it took, the warnings it raised). One retry of a timeout, so a moment of load on
        a shared machine is not recorded as a timeout (which would also skip every larger shape)."""
        limit = self.plan.grid.budget.compile_s if strategy.compiled else self.plan.time_budget_s
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            try:
                output = within(call, shape, limit)
            except measure.CaseTimeout:
                start = time.perf_counter()
                output = within(call, shape, limit)
            seconds = time.perf_counter() - start
        return output, seconds, case_warnings(caught)

    def _time(self, benchmark: Any, call: Call, shape: PreparedShape) -> Timing:
        """pytest-benchmark's pedantic mode: iterations so a round lasts well above the clock's resolution. A timing
        that other processes disturbed is done again once they are gone; what stays disturbed is `unstable`."""
        start = measure.synced_clock()
        within(call, shape, self.plan.time_budget_s)
        one_call = measure.synced_clock() - start
        p = measure.round_plan(one_call, self.plan.grid.budget.target_s)
        # The timed phase is bounded by its plan; this limit only guards against a hang (a loaded machine can slow
        # calls many times over, and that must not be mistaken for a timeout of the strategy).
        planned_s = (p.rounds + p.warmup_rounds) * p.iterations * one_call
        with measure.time_limit(max(30.0, self.plan.time_budget_s + 20 * planned_s), "the timed rounds"):
            before = machine.snapshot()
            benchmark.pedantic(call, args=(shape.model, shape.x), rounds=p.rounds, iterations=p.iterations,
                               warmup_rounds=p.warmup_rounds)
            rounds = list(benchmark.stats.stats.data)
            disturbed = machine.disturbance(before, machine.snapshot())
            note = ""
            if disturbed and self.settler.settle():
                before = machine.snapshot()
                rounds = measure.time_rounds(functools.partial(call, shape.model, shape.x), p.iterations, p.rounds)
                note, disturbed = f"re-timed: the first timing was disturbed ({disturbed})", \
                    machine.disturbance(before, machine.snapshot())
        reason = disturbed or shape.drift
        return Timing(rounds, p.iterations, unstable=bool(reason), message=unstable_message(reason, note))

    def playoff(self, case: Case, device: str, records: list[CaseRecord]) -> VerdictRecord | None:
        """The verdict of one shape (bench/run/playoff.py); None when no autodiff strategy of the shape is valid."""
        shape = self.shapes.prepare(case, device)

        def call_of(name: str) -> Callable[[], object]:
            return functools.partial(modes.timed_call(strategies.REGISTRY[name], case.mode), shape.model, shape.x)

        compiled = any(strategies.REGISTRY[r.strategy].compiled for r in records)
        with compiling.no_recompile(compiled):
            return playoff.hold(records, call_of, self.plan.grid.budget.target_s, self.plan.time_budget_s,
                                self.settler, shape.drift)


def within(call: Call, shape: PreparedShape, limit: float) -> object:
    """call(model, x) under a time limit, CUDA work included."""
    with measure.time_limit(limit, "one call"):
        output = call(shape.model, shape.x)
        measure.synced_clock()  # wait for queued CUDA work inside the limit
    return output


def validate(output: object, ref: reference.Reference, strategy: Strategy, case: Case) -> reference.Check:
    """The first call's output against the float64 reference: J (or J.sum(1)), or the parameter gradient in train
    mode; the tolerance follows the case's dtype."""
    dtype = getattr(torch, case.dtype)
    if case.mode == "train":
        expected = ref.output_sum_penalty_gradient if strategy.returns == "output_sum" else ref.penalty_gradient
        return reference.validate_gradient(output, expected, dtype)
    return reference.validate(output, ref.jacobian, strategy.returns, dtype)


def unstable_message(reason: str, note: str = "") -> str:
    """The message of a timing: whether it was re-timed, and why it is still unstable."""
    return "; ".join(m for m in (note, f"unstable: {reason}" if reason else "") if m)


IGNORED_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def case_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct warnings a call raised (first lines), e.g. torch.func's "There is a performance drop because we
    have not yet implemented the batching rule for ...": a slow fallback that explains a slow number. Deprecation
    notices say nothing about the case and are left out."""
    found = (str(w.message).strip().splitlines()[0][:240] for w in caught
             if not issubclass(w.category, IGNORED_WARNINGS) and str(w.message).strip())
    return list(dict.fromkeys(found))


def case_record(strategy: Strategy, case: Case, device: str, outcome: Outcome, shape: PreparedShape | None,
                predicted_bytes: int, wall_s: float) -> CaseRecord:
    """The record of a case: who and where, then what its outcome measured."""
    check = outcome.check
    return CaseRecord(
        strategy=strategy.name, model=case.model, device=device, dtype=case.dtype, **case.sizes._asdict(),
        mode=case.mode, status=outcome.status, message=outcome.message,
        **(outcome.timing.fields() if outcome.timing else {}),
        forward_median_s=shape.forward_median_s if shape else None, coupled=shape.coupled if shape else None,
        peak_memory_bytes=outcome.peak_memory_bytes, predicted_memory_bytes=predicted_bytes,
        max_abs_error=check.max_abs_error if check else None, tolerance=check.tolerance if check else None,
        setup_s=outcome.setup_s, warnings=outcome.warnings, returns=strategy.returns,
        is_jacobian=is_jacobian(strategy.returns, case.sizes.out_dim),
        independent_samples=strategy.independent_samples, compiled=strategy.compiled, summary=strategy.summary,
        cost=strategy.cost, sweeps=list(case.sweeps), case_id=case_id(strategy.name, device, case.shape_id),
        wall_s=round(wall_s, 4))


def _one_sample_note(shape: PreparedShape) -> str:
    """Why a strategy may have failed: the model cannot run one sample, which per-sample strategies feed it."""
    problem = models.run_problem(shape.model, shape.x[:1], shape.case.sizes.out_dim)
    return f" (the model fails on a one-sample batch, which per-sample strategies feed it: {problem})" if problem \
        else ""
