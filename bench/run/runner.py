"""One case = one strategy × shape × mode × device: budget checks, validation, timing, memory -> one record.

Order per case: build the model and input, time the forward pass, compute the float64 reference (the three shared
by every strategy of the shape), validate the strategy's first call (for a compiled strategy that call compiles:
its time is `setup_s`), time it with pytest-benchmark, measure peak memory in a separate pass. No exception escapes:
every failure becomes a status. After a shape's last case, `playoff` re-times its close contenders interleaved.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pytest_benchmark.stats import Stats
from torch import Tensor, nn

import strategies
from bench import stats
from bench.run import compiling, machine, measure, models, modes, playoff, reference
from bench.run.grid import Case
from bench.run.plan import RunPlan
from bench.schema import AXES, case_id, fmt_bytes
from strategies import Strategy, Unsupported

Record = dict[str, Any]
Call = Callable[[nn.Module, Tensor], object]  # what one timed call runs: fn(model, x)


def default_memory_estimate(batch: int, hidden: int, in_dim: int, out_dim: int, dtype: torch.dtype) -> int:
    """For strategies that declare none: two forward passes' activations and the result."""
    from strategies._common import activations_bytes

    return activations_bytes(batch, hidden, in_dim, out_dim, dtype, copies=2)


@dataclass
class PreparedShape:
    """What every strategy of one shape on one device shares: the model, the input, the forward time, the reference.
    A shape that could not be prepared carries the status and message every strategy of it gets."""

    key: tuple[Case, str]
    model: nn.Module | None = None
    x: Tensor | None = None  # [B, in]
    forward_median_s: float | None = None
    reference: reference.Reference | None = None
    drift: str = ""  # why the machine ran slower than its quickest when this shape started ("" if it did not)
    status: str = "ok"
    message: str = ""


SETTLE_TOTAL_S = 120.0  # a run waits at most this long in all for other processes' load to pass


class CaseRunner:
    def __init__(self, plan: RunPlan):
        self.plan = plan
        self._shape: PreparedShape | None = None
        self._failed: dict[tuple, list[tuple[Case, str]]] = {}  # (strategy, device, model, dtype, mode) -> cases
        self._memory_budget: dict[str, int] = {}
        self._warm: set[tuple[str, str]] = set()  # (device, model) warmed up
        self.drift = machine.Drift()
        self._settle_left = SETTLE_TOTAL_S
        self._compiles = any(strategies.REGISTRY[name].compiled for name in plan.strategy_names)

    def memory_budget(self, device: str) -> int:
        if device not in self._memory_budget:
            self._memory_budget[device] = self.plan.memory_budget_bytes or int(
                self.plan.grid.budget.memory_fraction * measure.available_memory(device)
            )
        return self._memory_budget[device]

    def warm_up(self, device: str, case: Case) -> None:
        """Call every strategy once on a two-sample version of the case's model, outside any time limit: lazy imports
        (torch.func pulls in torch._dynamo and sympy), CUDA context and kernel loading happen here, never inside a
        timed or time-limited call (an import cut off by the time limit leaves torch half-initialised)."""
        if (device, case.model) in self._warm:
            return
        self._warm.add((device, case.model))
        torch.func.vmap(torch.func.jacrev(torch.sin))(torch.ones(2, 2))  # whatever the model, torch.func is loaded
        try:
            model, x = models.build(self.plan.model_defs[case.model], 2, case.hidden, case.in_dim, case.out_dim,
                                    device, torch.float32)
            reference.reference(model, x)
            measure.peak_memory(lambda: model(x), device)
        except Exception:  # a model that cannot be built is measured (and reported) per case
            return
        for name in self.plan.strategy_names:
            if strategies.REGISTRY[name].compiled:
                continue  # compiling is the case's own setup, timed apart
            try:
                strategies.REGISTRY[name](model, x)
            except Exception:
                pass

    def run_case(self, benchmark: Any, strategy_name: str, case: Case, device: str) -> Record:
        """The record of one case, whatever happens: measured, or with the status and message of what stopped it."""
        started = time.perf_counter()
        strategy = strategies.REGISTRY[strategy_name]
        rec = new_record(strategy, case, device)
        try:
            skip = self._skip_reason(strategy, case, device, rec)
            if skip is None:
                self.warm_up(device, case)
            rec.update(skip or self._measure(benchmark, strategy, case, device, rec))
        except Exception as exc:  # a harness bug must not stop the run either
            rec.update(status="error", message=f"harness: {type(exc).__name__}: {exc}")
        if rec.pop("_predicts_larger", False):
            self._failed.setdefault(_lineage(strategy, case, device), []).append((case, rec["status"]))
        rec["wall_s"] = round(time.perf_counter() - started, 4)
        return rec

    def _skip_reason(self, strategy: Strategy, case: Case, device: str, rec: Record) -> Record | None:
        """skipped (a smaller shape failed) or over_budget (predicted memory), decided before running anything."""
        for earlier, status in self._failed.get(_lineage(strategy, case, device), []):
            if all(getattr(case, a) >= getattr(earlier, a) for a in AXES):
                return {"status": "skipped", "message": f"not run: at least as large as {earlier.shape_id}, "
                                                        f"which ended in {status}"}
        estimate = strategy.memory_estimate or default_memory_estimate
        predicted = estimate(case.batch, case.hidden, case.in_dim, case.out_dim, getattr(torch, case.dtype))
        rec["predicted_memory_bytes"] = predicted * (modes.TRAIN_MEMORY_FACTOR if case.mode == "train" else 1)
        budget = self.memory_budget(device)
        if rec["predicted_memory_bytes"] > budget:
            return {"status": "over_budget", "message": f"predicted {fmt_bytes(rec['predicted_memory_bytes'])} > "
                                                        f"memory budget {fmt_bytes(budget)}"}
        return None

    def _measure(self, benchmark: Any, strategy: Strategy, case: Case, device: str, rec: Record) -> Record:
        shape = self._prepare(case, device)
        rec.update(forward_median_s=shape.forward_median_s, coupled=shape.reference.coupled if shape.reference
                   else None)
        if shape.status != "ok":  # out of memory for the reference: larger shapes will be too
            return {"status": shape.status, "message": shape.message, "_predicts_larger": shape.status == "oom"}
        model, x = shape.model, shape.x
        call = modes.timed_call(strategy, case.mode)
        try:
            output, setup_s, rec["warnings"] = self._first_call(strategy, call, model, x)
            rec["setup_s"] = setup_s if strategy.compiled else None
            check = self._validate(output, shape.reference, strategy, case)
            del output
            rec.update(max_abs_error=check.max_abs_error, tolerance=check.tolerance)
            if not check.ok:
                return {"status": "wrong", "message": check.message}
            with compiling.no_recompile(strategy.compiled):
                timed = self._time(benchmark, call, model, x, shape.drift)
                peak = measure.peak_memory(lambda: call(model, x), device)
            return {"status": "ok", **timed, "peak_memory_bytes": peak}
        except Unsupported as exc:
            return {"status": "unsupported", "message": str(exc)}
        except measure.CaseTimeout as exc:
            # only a single call over the budget predicts that larger shapes will time out too
            return {"status": "timeout", "message": str(exc), "_predicts_larger": exc.what == "one call"}
        except Exception as exc:
            if measure.is_out_of_memory(exc):
                _free(device)
                return {"status": "oom", "message": _first_line(exc), "_predicts_larger": True}
            return {"status": "error", "message": f"{type(exc).__name__}: {_first_line(exc)}"
                                                  + _one_sample_note(model, x, case.out_dim)}

    @staticmethod
    def _validate(output: object, ref: reference.Reference, strategy: Strategy, case: Case) -> reference.Check:
        dtype = getattr(torch, case.dtype)
        if case.mode == "train":
            expected = ref.output_sum_penalty_gradient if strategy.returns == "output_sum" else ref.penalty_gradient
            return reference.validate_gradient(output, expected, dtype)
        return reference.validate(output, ref.jacobian, strategy.returns, dtype)

    def _time(self, benchmark: Any, call: Call, model: nn.Module, x: Tensor, drift: str) -> Record:
        """pytest-benchmark's pedantic mode: iterations so a round lasts well above the clock's resolution. A timing
        that other processes disturbed is done again once they are gone; what stays disturbed is `unstable`."""
        start = measure.synced_clock()
        self._within_budget(call, model, x)
        one_call = measure.synced_clock() - start
        p = measure.plan(one_call, self.plan.grid.budget.target_s)
        # The timed phase is bounded by its plan; this limit only guards against a hang (a loaded machine can slow
        # calls many times over, and that must not be mistaken for a timeout of the strategy).
        planned_s = (p.rounds + p.warmup_rounds) * p.iterations * one_call
        with measure.time_limit(max(30.0, self.plan.time_budget_s + 20 * planned_s), "the timed rounds"):
            before = machine.snapshot()
            benchmark.pedantic(call, args=(model, x), rounds=p.rounds, iterations=p.iterations,
                               warmup_rounds=p.warmup_rounds)
            rounds = list(benchmark.stats.stats.data)
            disturbed = machine.disturbance(before, machine.snapshot())
            note = ""
            if disturbed and self.settle():
                before = machine.snapshot()
                rounds = measure.time_rounds(functools.partial(call, model, x), p.iterations, p.rounds)
                note, disturbed = f"re-timed: the first timing was disturbed ({disturbed})", \
                    machine.disturbance(before, machine.snapshot())
        return timing(rounds, p.iterations) | unstable(disturbed or drift, note)

    def settle(self) -> bool:
        """Wait (within the grid's settle_s and the run's total) until no other process loads the CPUs."""
        wait = min(self.plan.grid.budget.settle_s, self._settle_left)
        if wait <= 0:
            return False
        quiet, waited = machine.wait_until_quiet(wait)
        self._settle_left -= waited
        return quiet

    def playoff(self, case: Case, device: str, records: list[Record]) -> Record | None:
        """The verdict of one shape (bench/run/playoff.py); None when no autodiff strategy of the shape is valid."""
        valid, contenders = playoff.candidates(records)
        if not valid:
            return None
        if len(contenders) == 1:
            return playoff.sole(valid, contenders)
        shape = self._prepare(case, device)
        calls = {r["strategy"]: functools.partial(modes.timed_call(strategies.REGISTRY[r["strategy"]], case.mode),
                                                  shape.model, shape.x) for r in contenders}
        iterations = {r["strategy"]: r["iterations"] for r in contenders}
        n = playoff.rounds_for(contenders, self.plan.grid.budget.target_s)
        guard = max(30.0, 20 * n * self.plan.time_budget_s * len(calls))
        compiled = any(strategies.REGISTRY[name].compiled for name in calls)
        with compiling.no_recompile(compiled):
            times, disturbed = playoff.interleave(calls, iterations, n, guard)
            note = ""
            if disturbed and self.settle():
                note = f"re-timed: the first playoff was disturbed ({disturbed})"
                times, disturbed = playoff.interleave(calls, iterations, n, guard)
        return playoff.decided(valid, contenders, times) | unstable(disturbed or shape.drift, note)

    def _first_call(self, strategy: Strategy, call: Call, model: nn.Module, x: Tensor
                    ) -> tuple[object, float, list[str]]:
        """The validation call, under the time budget (the compile budget for a compiled strategy, whose first call
        compiles): (output, seconds it took, the warnings it raised). One retry of a timeout, so a moment of load on
        a shared machine is not recorded as a timeout (which would also skip every larger shape)."""
        limit = self.plan.grid.budget.compile_s if strategy.compiled else self.plan.time_budget_s
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            try:
                output = self._within_budget(call, model, x, limit)
            except measure.CaseTimeout:
                start = time.perf_counter()
                output = self._within_budget(call, model, x, limit)
            seconds = time.perf_counter() - start
        return output, seconds, case_warnings(caught)

    def _within_budget(self, call: Call, model: nn.Module, x: Tensor, limit: float | None = None) -> object:
        with measure.time_limit(limit or self.plan.time_budget_s, "one call"):
            output = call(model, x)
            measure.synced_clock()  # wait for queued CUDA work inside the limit
        return output

    def _prepare(self, case: Case, device: str) -> PreparedShape:
        """Build (once per shape and device) the model, input, forward time and float64 reference."""
        if self._shape is not None and self._shape.key == (case, device):
            return self._shape
        self._shape = None  # free the previous shape's tensors before building the next
        _free(device)
        if self._compiles:
            compiling.reset()  # each compiled strategy compiles once for this shape: never near the recompile limit
        shape = PreparedShape(key=(case, device))
        try:
            with measure.time_limit(max(10 * self.plan.time_budget_s, 30), "building the model and reference"):
                self._build(shape, case, device)
        except (models.ModelError, reference.ModelProblem) as exc:
            shape.status, shape.message = "error", str(exc)
        except MemoryError as exc:
            shape.status, shape.message = "over_budget", f"reference: {exc}"
        except measure.CaseTimeout as exc:
            shape.status, shape.message = "timeout", str(exc)
        except Exception as exc:
            status = "oom" if measure.is_out_of_memory(exc) else "error"
            shape.status, shape.message = status, f"model/reference: {type(exc).__name__}: {_first_line(exc)}"
        self._shape = shape
        return shape

    def _build(self, shape: PreparedShape, case: Case, device: str) -> None:
        model, x = models.build(self.plan.model_defs[case.model], case.batch, case.hidden, case.in_dim, case.out_dim,
                                device, getattr(torch, case.dtype))
        problem = models.run_problem(model, x, case.out_dim)
        if problem:
            raise reference.ModelProblem(problem + (" (a one-sample batch)" if case.batch == 1 else ""))
        with torch.no_grad():
            shape.forward_median_s = measure.median_time(lambda: model(x), self.plan.grid.budget.target_s / 2)
        shape.reference = reference.reference(model, x, self.memory_budget(device), hidden=case.hidden,
                                              train=case.mode == "train")
        shape.model, shape.x = model, x
        shape.drift = self.drift.check()
        if shape.drift and self.settle():
            shape.drift = self.drift.check()


def timing(rounds: list[float], iterations: int) -> Record:
    """The numbers of a timed case, from its per-call time in each round (pytest-benchmark's statistics)."""
    summary = Stats()
    for seconds in rounds:
        summary.update(seconds)
    _, low, high = stats.median_ci(rounds)
    return {"time_median_s": summary.median, "time_iqr_s": summary.iqr, "time_min_s": summary.min,
            "time_mean_s": summary.mean, "rounds": len(rounds), "iterations": iterations, "time_ci_low_s": low,
            "time_ci_high_s": high, "round_times_s": rounds}


def unstable(reason: str, note: str = "") -> Record:
    """`unstable` and the message of a timing: why it was disturbed, and whether it was re-timed."""
    message = "; ".join(m for m in (note, f"unstable: {reason}" if reason else "") if m)
    return {"unstable": bool(reason), "message": message}


IGNORED_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def case_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct warnings a call raised (first lines), e.g. torch.func's "There is a performance drop because we
    have not yet implemented the batching rule for ...": a slow fallback that explains a slow number. Deprecation
    notices say nothing about the case and are left out."""
    found = (str(w.message).strip().splitlines()[0][:240] for w in caught
             if not issubclass(w.category, IGNORED_WARNINGS) and str(w.message).strip())
    return list(dict.fromkeys(found))


def new_record(strategy: Strategy, case: Case, device: str) -> Record:
    """The fields every record has, whatever its status."""
    return {
        "strategy": strategy.name,
        "model": case.model,
        "device": device,
        "dtype": case.dtype,
        "batch": case.batch,
        "hidden": case.hidden,
        "in_dim": case.in_dim,
        "out_dim": case.out_dim,
        "mode": case.mode,
        "returns": strategy.returns,
        "independent_samples": strategy.independent_samples,
        "is_jacobian": strategy.returns == "jacobian" or case.out_dim == 1,
        "compiled": strategy.compiled,
        "summary": strategy.summary,
        "cost": strategy.cost,
        "sweeps": list(case.sweeps),
        "case_id": case_id(strategy.name, device, case.shape_id),
        "message": "",
        "warnings": [],
    }


def _lineage(strategy: Strategy, case: Case, device: str) -> tuple:
    """The cases whose failure predicts this one's: same strategy, device, model, dtype and mode."""
    return strategy.name, device, case.model, case.dtype, case.mode


def _one_sample_note(model: nn.Module, x: Tensor, out_dim: int) -> str:
    """Why a strategy may have failed: the model cannot run one sample, which per-sample strategies feed it."""
    problem = models.run_problem(model, x[:1], out_dim)
    return f" (the model fails on a one-sample batch, which per-sample strategies feed it: {problem})" if problem \
        else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
