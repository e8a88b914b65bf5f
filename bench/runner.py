"""One case = one strategy × shape × device: budget checks, validation, timing, memory -> one record.

Order per case (Contract 3 / measurement rules): build model and input, time the forward pass, compute the float64
reference (both shared by every strategy of the shape), validate the strategy, time it with pytest-benchmark,
measure peak memory in a separate pass. No exception escapes: every failure becomes a status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import strategies
from bench import measure, models, reference
from bench.grid import AXES, Case
from bench.session import Run
from strategies import Strategy, Unsupported


def default_memory_estimate(batch: int, hidden: int, in_dim: int, out_dim: int, dtype: torch.dtype) -> int:
    """For strategies that declare none: two forward passes' activations and the result."""
    from strategies._common import activations_bytes

    return activations_bytes(batch, hidden, in_dim, out_dim, dtype, copies=2)


@dataclass
class Shape:
    """What every strategy of one case shares: the model, the input, the forward time, the reference."""

    key: tuple
    model: nn.Module | None = None
    x: Tensor | None = None  # [B, in]
    forward_median_s: float | None = None
    reference: Tensor | None = None  # [B, out, in] float64
    coupled: bool | None = None
    status: str = "ok"  # not ok: every strategy of this shape gets this status and message
    message: str = ""


class CaseRunner:
    def __init__(self, run: Run):
        self.run = run
        self._shape: Shape | None = None
        self._failed_shapes: dict[tuple, list[tuple[Case, str]]] = {}  # (strategy, device, model, dtype) -> cases
        self._memory_budget: dict[str, int] = {}
        self._warm: set[tuple[str, str]] = set()  # (device, model) warmed up

    def memory_budget(self, device: str) -> int:
        if device not in self._memory_budget:
            self._memory_budget[device] = self.run.memory_budget_bytes or int(
                self.run.grid.budget.memory_fraction * measure.available_memory(device)
            )
        return self._memory_budget[device]

    def warm_up(self, device: str, model_name: str) -> None:
        """Call every strategy once on a tiny version of the model, outside any time limit: lazy imports (torch.func
        pulls in sympy), CUDA context and kernel loading happen here, never inside a timed or time-limited call."""
        if (device, model_name) in self._warm:
            return
        self._warm.add((device, model_name))
        try:
            model, x = models.build(self.run.model_defs[model_name], 2, 4, 3, 2, device, torch.float32)
            reference.reference(model, x)
            measure.peak_memory(lambda: model(x), device)
        except Exception:  # a model that cannot be built small is measured (and reported) per case
            return
        for name in self.run.strategy_names:
            try:
                strategies.REGISTRY[name](model, x)
            except Exception:
                pass

    def record(self, strategy: Strategy, case: Case, device: str) -> dict[str, Any]:
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
            "case_id": f"{strategy.name}-{device}-{case.shape_id}",
            "message": "",
        }

    def run_case(self, benchmark, strategy_name: str, case: Case, device: str) -> dict[str, Any]:
        started = time.perf_counter()
        strategy = strategies.REGISTRY[strategy_name]
        rec = self.record(strategy, case, device)
        try:
            self.warm_up(device, case.model)
            rec.update(self._measure(benchmark, strategy, case, device, rec))
        except Exception as exc:  # a harness bug must not stop the run either
            rec.update(status="error", message=f"harness: {type(exc).__name__}: {exc}")
        single_call_timeout = rec.pop("_single_call", False)
        if single_call_timeout or rec["status"] == "oom":
            self._failed_shapes.setdefault((strategy.name, device, case.model, case.dtype), []).append(
                (case, rec["status"])
            )
        rec["wall_s"] = round(time.perf_counter() - started, 4)
        return rec

    def _measure(self, benchmark, strategy: Strategy, case: Case, device: str, rec: dict) -> dict[str, Any]:
        dtype = getattr(torch, case.dtype)
        dims = (case.batch, case.hidden, case.in_dim, case.out_dim)
        for earlier, status in self._failed_shapes.get((strategy.name, device, case.model, case.dtype), []):
            if all(getattr(case, a) >= getattr(earlier, a) for a in AXES):
                return {"status": "skipped", "message": f"not run: at least as large as {earlier.shape_id}, "
                                                        f"which ended in {status}"}
        estimate = strategy.memory_estimate or default_memory_estimate
        predicted = estimate(*dims, dtype)
        rec["predicted_memory_bytes"] = predicted
        budget = self.memory_budget(device)
        if predicted > budget:
            return {"status": "over_budget", "message": f"predicted {_gib(predicted)} > memory budget {_gib(budget)}"}

        shape = self._prepare(case, device, dtype)
        rec.update(forward_median_s=shape.forward_median_s, coupled=shape.coupled)
        if shape.status != "ok":
            return {"status": shape.status, "message": shape.message}

        model, x = shape.model, shape.x
        try:
            output = self._first_call(strategy, model, x)
            check = reference.validate(output, shape.reference, strategy.returns, dtype)
            del output
            rec.update(max_abs_error=check.max_abs_error, tolerance=check.tolerance)
            if not check.ok:
                return {"status": "wrong", "message": check.message}
            start = measure.synced_clock()
            self._call_within_budget(strategy, model, x)
            one_call = measure.synced_clock() - start
            p = measure.plan(one_call, self.run.grid.budget.target_s)
            # The timed phase is bounded by its plan; this limit only guards against a hang (a loaded machine can
            # slow calls many times over, and that must not be mistaken for a timeout of the strategy).
            planned_s = (p.rounds + p.warmup_rounds) * p.iterations * one_call
            with measure.time_limit(max(30.0, self.run.time_budget_s + 20 * planned_s), "the timed rounds"):
                benchmark.pedantic(strategy.fn, args=(model, x), rounds=p.rounds, iterations=p.iterations,
                                   warmup_rounds=p.warmup_rounds)
            peak = measure.peak_memory(lambda: strategy(model, x), device)
        except Unsupported as exc:
            return {"status": "unsupported", "message": str(exc)}
        except measure.CaseTimeout as exc:
            # only a single call over the budget predicts that larger shapes will time out too
            return {"status": "timeout", "message": str(exc), "_single_call": exc.what == "one call"}
        except Exception as exc:
            if measure.is_out_of_memory(exc):
                _free(device)
                return {"status": "oom", "message": _first_line(exc)}
            return {"status": "error", "message": f"{type(exc).__name__}: {_first_line(exc)}"
                                                  + _one_sample_note(model, x, case.out_dim)}
        stats = benchmark.stats.stats
        return {
            "status": "ok",
            "time_median_s": stats.median,
            "time_iqr_s": stats.iqr,
            "time_min_s": stats.min,
            "time_mean_s": stats.mean,
            "rounds": stats.rounds,
            "iterations": p.iterations,
            "peak_memory_bytes": peak,
        }

    def _first_call(self, strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
        """The validation call, under the time budget. One retry, so a moment of load on a shared machine is not
        recorded as a timeout (which would also skip every larger shape)."""
        try:
            return self._call_within_budget(strategy, model, x)
        except measure.CaseTimeout:
            return self._call_within_budget(strategy, model, x)

    def _call_within_budget(self, strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
        with measure.time_limit(self.run.time_budget_s, "one call"):
            output = strategy(model, x)
            measure.synced_clock()  # wait for queued CUDA work inside the limit
        return output

    def _prepare(self, case: Case, device: str, dtype: torch.dtype) -> Shape:
        """Build (once per shape and device) the model, input, forward time and float64 reference."""
        key = (case, device)
        if self._shape is not None and self._shape.key == key:
            return self._shape
        self._shape = None  # free the previous shape's tensors before building the next
        _free(device)
        shape = Shape(key=key)
        try:
            with measure.time_limit(max(10 * self.run.time_budget_s, 30), "building the model and reference"):
                model, x = models.build(self.run.model_defs[case.model], case.batch, case.hidden, case.in_dim,
                                        case.out_dim, device, dtype)
                problem = models.run_problem(model, x, case.out_dim)
                if problem:
                    raise reference.ModelProblem(problem + (" (a one-sample batch)" if case.batch == 1 else ""))
                with torch.no_grad():
                    shape.forward_median_s = measure.median_time(lambda: model(x), self.run.grid.budget.target_s / 2)
                ref = reference.reference(model, x, self.memory_budget(device), hidden=case.hidden)
            shape.reference, shape.coupled = ref.jacobian, ref.coupled
            shape.model, shape.x = model, x
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _one_sample_note(model: nn.Module, x: Tensor, out_dim: int) -> str:
    """Why a strategy may have failed: the model cannot run one sample, which per-sample strategies feed it."""
    problem = models.run_problem(model, x[:1], out_dim)
    return f" (the model fails on a one-sample batch, which per-sample strategies feed it: {problem})" if problem \
        else ""


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
