"""One case = one strategy × shape × device: budget checks, validation, timing, memory -> one record.

Order per case: build the model and input, time the forward pass, compute the float64 reference (the three shared
by every strategy of the shape), validate the strategy, time it with pytest-benchmark, measure peak memory in a
separate pass. No exception escapes: every failure becomes a status.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from pytest_benchmark.stats import Stats
from torch import Tensor, nn

import strategies
from bench import machine, measure, models, reference, stats
from bench.grid import Case
from bench.plan import RunPlan
from bench.schema import AXES, CLOSED_FORM, CONTENDER_MARGIN, SETTING, case_id, fmt_bytes
from strategies import Strategy, Unsupported

Record = dict[str, Any]


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
    reference: Tensor | None = None  # [B, out, in] float64
    coupled: bool | None = None
    drift: str = ""  # why the machine ran slower than its quickest when this shape started ("" if it did not)
    status: str = "ok"
    message: str = ""


SETTLE_TOTAL_S = 120.0  # a run waits at most this long in all for other processes' load to pass
PLAYOFF_ROUNDS = (9, 41)  # interleaved rounds of a playoff: at least, at most


class CaseRunner:
    def __init__(self, plan: RunPlan):
        self.plan = plan
        self._shape: PreparedShape | None = None
        self._failed: dict[tuple, list[tuple[Case, str]]] = {}  # (strategy, device, model, dtype) -> failed cases
        self._memory_budget: dict[str, int] = {}
        self._warm: set[tuple[str, str]] = set()  # (device, model) warmed up
        self.drift = machine.Drift()
        self._settle_left = SETTLE_TOTAL_S

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
            self.warm_up(device, case)
            rec.update(self._skip_reason(strategy, case, device, rec) or self._measure(benchmark, strategy, case,
                                                                                       device, rec))
        except Exception as exc:  # a harness bug must not stop the run either
            rec.update(status="error", message=f"harness: {type(exc).__name__}: {exc}")
        if rec.pop("_predicts_larger", False):
            self._failed.setdefault((strategy.name, device, case.model, case.dtype), []).append((case, rec["status"]))
        rec["wall_s"] = round(time.perf_counter() - started, 4)
        return rec

    def _skip_reason(self, strategy: Strategy, case: Case, device: str, rec: Record) -> Record | None:
        """skipped (a smaller shape failed) or over_budget (predicted memory), decided before running anything."""
        for earlier, status in self._failed.get((strategy.name, device, case.model, case.dtype), []):
            if all(getattr(case, a) >= getattr(earlier, a) for a in AXES):
                return {"status": "skipped", "message": f"not run: at least as large as {earlier.shape_id}, "
                                                        f"which ended in {status}"}
        estimate = strategy.memory_estimate or default_memory_estimate
        rec["predicted_memory_bytes"] = predicted = estimate(case.batch, case.hidden, case.in_dim, case.out_dim,
                                                             getattr(torch, case.dtype))
        budget = self.memory_budget(device)
        if predicted > budget:
            return {"status": "over_budget", "message": f"predicted {fmt_bytes(predicted)} > memory budget "
                                                        f"{fmt_bytes(budget)}"}
        return None

    def _measure(self, benchmark: Any, strategy: Strategy, case: Case, device: str, rec: Record) -> Record:
        shape = self._prepare(case, device)
        rec.update(forward_median_s=shape.forward_median_s, coupled=shape.coupled)
        if shape.status != "ok":  # out of memory for the reference: larger shapes will be too
            return {"status": shape.status, "message": shape.message, "_predicts_larger": shape.status == "oom"}
        model, x = shape.model, shape.x
        try:
            output = self._first_call(strategy, model, x)
            check = reference.validate(output, shape.reference, strategy.returns, getattr(torch, case.dtype))
            del output
            rec.update(max_abs_error=check.max_abs_error, tolerance=check.tolerance)
            if not check.ok:
                return {"status": "wrong", "message": check.message}
            timed = self._time(benchmark, strategy, model, x, shape.drift)
            return {"status": "ok", **timed, "peak_memory_bytes": measure.peak_memory(lambda: strategy(model, x),
                                                                                       device)}
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

    def _time(self, benchmark: Any, strategy: Strategy, model: nn.Module, x: Tensor, drift: str) -> Record:
        """pytest-benchmark's pedantic mode: iterations so a round lasts well above the clock's resolution. A timing
        that other processes disturbed is done again once they are gone; what stays disturbed is `unstable`."""
        start = measure.synced_clock()
        self._call_within_budget(strategy, model, x)
        one_call = measure.synced_clock() - start
        p = measure.plan(one_call, self.plan.grid.budget.target_s)
        # The timed phase is bounded by its plan; this limit only guards against a hang (a loaded machine can slow
        # calls many times over, and that must not be mistaken for a timeout of the strategy).
        planned_s = (p.rounds + p.warmup_rounds) * p.iterations * one_call
        with measure.time_limit(max(30.0, self.plan.time_budget_s + 20 * planned_s), "the timed rounds"):
            before = machine.snapshot()
            benchmark.pedantic(strategy.fn, args=(model, x), rounds=p.rounds, iterations=p.iterations,
                               warmup_rounds=p.warmup_rounds)
            rounds = list(benchmark.stats.stats.data)
            disturbed = machine.disturbance(before, machine.snapshot())
            note = ""
            if disturbed and self.settle():
                before = machine.snapshot()
                rounds = measure.time_rounds(functools.partial(strategy.fn, model, x), p.iterations, p.rounds)
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
        """The verdict of one shape: its autodiff strategies within CONTENDER_MARGIN of the fastest, re-timed in
        interleaved rounds (a shuffled order each round, one process), so a slow moment of the machine lands on all
        of them alike. None when no autodiff strategy of the shape is valid."""
        valid = sorted((r for r in records if r["status"] == "ok" and r["is_jacobian"]
                        and r["strategy"] != CLOSED_FORM), key=lambda r: r["time_median_s"])
        if not valid:
            return None
        fastest = valid[0]["time_median_s"]
        contenders = [r for r in valid if r["time_median_s"] <= CONTENDER_MARGIN * fastest]
        result = {**{k: valid[0][k] for k in (*SETTING, *AXES)}, "contenders": [r["strategy"] for r in contenders],
                  "unstable": False, "message": ""}
        if len(contenders) == 1:
            runner_up = valid[1] if len(valid) > 1 else None
            return result | {"best": valid[0]["strategy"], "verdict": "winner", "tied_with": [], "rounds": 0,
                             "runner_up": runner_up["strategy"] if runner_up else None,
                             "runner_up_ratio": [runner_up["time_median_s"] / fastest] * 3 if runner_up else None}
        shape = self._prepare(case, device)
        calls = {r["strategy"]: functools.partial(strategies.REGISTRY[r["strategy"]].fn, shape.model, shape.x)
                 for r in contenders}
        iterations = {r["strategy"]: r["iterations"] for r in contenders}
        round_s = sum(r["time_median_s"] * r["iterations"] for r in contenders)
        n = int(min(PLAYOFF_ROUNDS[1], max(PLAYOFF_ROUNDS[0], 2 * self.plan.grid.budget.target_s // round_s)))
        times, disturbed = self._interleave(calls, iterations, n)
        note = ""
        if disturbed and self.settle():
            note = f"re-timed: the first playoff was disturbed ({disturbed})"
            times, disturbed = self._interleave(calls, iterations, n)
        verdict = stats.decide(times)
        return result | {"best": verdict.best, "verdict": verdict.verdict, "tied_with": verdict.tied_with,
                         "rounds": n, "runner_up": verdict.runner_up,
                         "runner_up_ratio": list(verdict.ratios[verdict.runner_up]),
                         "ratios": {k: list(v) for k, v in verdict.ratios.items()}, "round_times_s": times} \
            | unstable(disturbed or shape.drift, note)

    def _interleave(self, calls: dict[str, Any], iterations: dict[str, int], rounds: int
                    ) -> tuple[dict[str, list[float]], str]:
        """`rounds` rounds; in each, every contender runs its `iterations` calls once, in a shuffled order."""
        order = random.Random(0)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():
            call()  # warm again: the last shape's other strategies ran in between
        guard = max(30.0, 20 * rounds * sum(self.plan.time_budget_s for _ in calls))
        with measure.time_limit(guard, "the playoff"):
            before = machine.snapshot()
            for _ in range(rounds):
                names = list(calls)
                order.shuffle(names)
                for name in names:
                    times[name] += measure.time_rounds(calls[name], iterations[name], 1)
        return times, machine.disturbance(before, machine.snapshot())

    def _first_call(self, strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
        """The validation call, under the time budget. One retry, so a moment of load on a shared machine is not
        recorded as a timeout (which would also skip every larger shape)."""
        try:
            return self._call_within_budget(strategy, model, x)
        except measure.CaseTimeout:
            return self._call_within_budget(strategy, model, x)

    def _call_within_budget(self, strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
        with measure.time_limit(self.plan.time_budget_s, "one call"):
            output = strategy(model, x)
            measure.synced_clock()  # wait for queued CUDA work inside the limit
        return output

    def _prepare(self, case: Case, device: str) -> PreparedShape:
        """Build (once per shape and device) the model, input, forward time and float64 reference."""
        if self._shape is not None and self._shape.key == (case, device):
            return self._shape
        self._shape = None  # free the previous shape's tensors before building the next
        _free(device)
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
        ref = reference.reference(model, x, self.memory_budget(device), hidden=case.hidden)
        shape.reference, shape.coupled = ref.jacobian, ref.coupled
        shape.model, shape.x = model, x
        shape.drift = self.drift.check()
        if shape.drift and self.settle():
            shape.drift = self.drift.check()


def timing(rounds: list[float], iterations: int) -> Record:
    """The numbers of a timed case, from its per-call time in each round (pytest-benchmark's statistics)."""
    summary = Stats()
    for seconds in rounds:
        summary.update(seconds)
    median, low, high = stats.median_ci(rounds)
    return {"time_median_s": summary.median, "time_iqr_s": summary.iqr, "time_min_s": summary.min,
            "time_mean_s": summary.mean, "rounds": len(rounds), "iterations": iterations, "time_ci_low_s": low,
            "time_ci_high_s": high, "round_times_s": rounds}


def unstable(reason: str, note: str = "") -> Record:
    """`unstable` and the message of a timing: why it was disturbed, and whether it was re-timed."""
    message = "; ".join(m for m in (note, f"unstable: {reason}" if reason else "") if m)
    return {"unstable": bool(reason), "message": message}


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
        "returns": strategy.returns,
        "independent_samples": strategy.independent_samples,
        "is_jacobian": strategy.returns == "jacobian" or case.out_dim == 1,
        "summary": strategy.summary,
        "cost": strategy.cost,
        "sweeps": list(case.sweeps),
        "case_id": case_id(strategy.name, device, case.shape_id),
        "message": "",
    }


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
