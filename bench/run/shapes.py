"""What every strategy of one shape on one device shares, prepared once: the model, the input, the forward time and
the float64 reference; and the warm-up that keeps lazy loading out of every time limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import strategies
from bench.run import compiling, machine, measure, models, reference
from bench.run.grid import Case


@dataclass
class PreparedShape:
    """The shared part of a shape's cases. A shape that could not be prepared carries the status and message every
    strategy of it gets."""

    case: Case
    device: str
    model: nn.Module | None = None
    x: Tensor | None = None  # [B, in]
    forward_median_s: float | None = None
    reference: reference.Reference | None = None
    drift: str = ""  # why the machine ran slower than usual when this shape started ("" if it did not)
    status: str = "ok"
    message: str = ""

    @property
    def coupled(self) -> bool | None:
        return self.reference.coupled if self.reference else None


class ShapeCache:
    """Prepares each shape once (the last one is kept: a run goes shape by shape) and warms each model up once."""

    def __init__(self, model_defs: dict[str, models.ModelDef], strategy_names: list[str], target_s: float,
                 time_budget_s: float, memory_budget: callable, settler: machine.Settler):
        self.model_defs = model_defs
        self.strategy_names = strategy_names
        self.target_s = target_s
        self.time_budget_s = time_budget_s
        self.memory_budget = memory_budget  # device -> bytes
        self.settler = settler
        self.drift = machine.Drift()
        self._shape: PreparedShape | None = None
        self._warm: set[tuple[str, str]] = set()  # (device, model) warmed up
        self._compiles = any(strategies.REGISTRY[name].compiled for name in strategy_names)

    def prepare(self, case: Case, device: str) -> PreparedShape:
        """Build (once per shape and device) the model, input, forward time and float64 reference."""
        if self._shape is not None and (self._shape.case, self._shape.device) == (case, device):
            return self._shape
        self._shape = None  # free the previous shape's tensors before building the next
        measure.free(device)
        if self._compiles:
            compiling.reset()  # each compiled strategy compiles once for this shape: never near the recompile limit
        shape = PreparedShape(case, device)
        try:
            with measure.time_limit(max(10 * self.time_budget_s, 30), "building the model and reference"):
                self._build(shape)
        except (models.ModelError, reference.ModelProblem) as exc:
            shape.status, shape.message = "error", str(exc)
        except MemoryError as exc:
            shape.status, shape.message = "over_budget", f"reference: {exc}"
        except measure.CaseTimeout as exc:
            shape.status, shape.message = "timeout", str(exc)
        except Exception as exc:
            status = "oom" if measure.is_out_of_memory(exc) else "error"
            shape.status, shape.message = status, f"model/reference: {type(exc).__name__}: {measure.first_line(exc)}"
        self._shape = shape
        return shape

    def _build(self, shape: PreparedShape) -> None:
        case = shape.case
        model, x = models.build(self.model_defs[case.model], case.sizes, shape.device, getattr(torch, case.dtype))
        problem = models.run_problem(model, x, case.sizes.out_dim)
        if problem:
            raise reference.ModelProblem(problem + (" (a one-sample batch)" if case.sizes.batch == 1 else ""))
        with torch.no_grad():
            shape.forward_median_s = measure.median_time(lambda: model(x), self.target_s / 2)
        shape.reference = reference.reference(model, x, self.memory_budget(shape.device), hidden=case.sizes.hidden,
                                              train=case.mode == "train")
        shape.model, shape.x = model, x
        shape.drift = self.drift.check()
        if shape.drift and self.settler.settle():
            shape.drift = self.drift.check()

    def warm_up(self, case: Case, device: str) -> None:
        """Call every strategy once on a two-sample version of the case's model, outside any time limit: lazy imports
        (torch.func pulls in torch._dynamo and sympy), CUDA context and kernel loading happen here, never inside a
        timed or time-limited call (an import cut off by the time limit leaves torch half-initialised)."""
        if (device, case.model) in self._warm:
            return
        self._warm.add((device, case.model))
        torch.func.vmap(torch.func.jacrev(torch.sin))(torch.ones(2, 2))  # whatever the model, torch.func is loaded
        try:
            model, x = models.build(self.model_defs[case.model], case.sizes._replace(batch=2), device, torch.float32)
            reference.reference(model, x)
            measure.peak_memory(lambda: model(x), device)
        except Exception:  # a model that cannot be built is measured (and reported) per case
            return
        for name in self.strategy_names:
            if strategies.REGISTRY[name].compiled:
                continue  # compiling is the case's own setup, timed apart
            try:
                strategies.REGISTRY[name](model, x)
            except Exception:
                pass
