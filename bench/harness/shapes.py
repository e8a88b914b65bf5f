"""What every strategy of one shape on one device shares, prepared once: the model, the input and the float64
reference; and the warm-up that keeps lazy loading out of every time limit.

A worker measures one shape per child process (bench/harness/worker.py), so nothing of another shape (its garbage,
its compiled graphs, the size of the heap it left) is here when this one is timed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import strategies
from bench.harness import measure, reference, second_order
from bench.harness.measure import Phases
from bench.spec import models
from bench.spec.grid import Case


@dataclass
class PreparedShape:
    """The shared part of a shape's cases. A shape that could not be prepared carries the status and message every
    strategy of it gets."""

    case: Case
    device: str
    model: nn.Module | None = None
    x: Tensor | None = None  # [B, in]
    reference: reference.Reference | second_order.SecondOrderReference | None = None
    status: str = "ok"
    message: str = ""

    @property
    def coupled(self) -> bool | None:
        return self.reference.coupled if self.reference else None


class ShapeCache:
    """Prepares each shape once (the last one is kept) and warms each model up once."""

    def __init__(self, model_defs: dict[str, models.ModelDef], strategy_names: list[str], time_budget_s: float,
                 memory_budget: Callable[[str], int], phases: Phases):
        self.model_defs = model_defs
        self.strategy_names = strategy_names
        self.time_budget_s = time_budget_s
        self.memory_budget = memory_budget  # device -> bytes
        self.phases = phases
        self._shape: PreparedShape | None = None
        self.warmed: set[tuple[str, str, str]] = set()  # (device, model, strategy) warmed up

    def prepare(self, case: Case, device: str, with_reference: bool = True) -> PreparedShape:
        """Build (once per shape and device) the model and input, and the float64 reference when asked (the
        measuring pass needs it; re-timing does not)."""
        if self._shape is not None and (self._shape.case, self._shape.device) == (case, device):
            return self._shape
        self._shape = None  # free the previous shape's tensors before building the next
        measure.free(device)
        shape = PreparedShape(case, device)
        try:
            with measure.time_limit(max(10 * self.time_budget_s, 30), "building the model and reference"):
                self._build(shape, with_reference)
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

    def _build(self, shape: PreparedShape, with_reference: bool) -> None:
        case = shape.case
        with self.phases("models"):
            model, x = models.build(self.model_defs[case.model], case.sizes, shape.device, getattr(torch, case.dtype))
            problem = models.run_problem(model, x, case.sizes.out_dim)
            if problem:
                raise reference.ModelProblem(problem + (" (a one-sample batch)" if case.sizes.batch == 1 else ""))
        if with_reference:
            with self.phases("references"):
                shape.reference = second_order.of_quantity(case.quantity, model, x, self.memory_budget(shape.device),
                                                        hidden=case.sizes.hidden, train=case.mode == "train")
        shape.model, shape.x = model, x

    def warm_up(self, case: Case, device: str, names: list[str] | None = None) -> None:
        """Call every strategy (or those named) once on a two-sample version of the case's model, outside any time
        limit: lazy imports (torch.func pulls in torch._dynamo and sympy), CUDA context and kernel loading happen
        here, never inside a timed or time-limited call (an import cut off by a time limit leaves torch
        half-initialised). Each (device, model, strategy) once."""
        names = [n for n in (names or self.strategy_names) if (device, case.model, n) not in self.warmed
                 and not strategies.REGISTRY[n].compiled]  # compiling is the case's own setup, timed apart
        if not names:
            return
        self.warmed |= {(device, case.model, n) for n in names}
        with self.phases("warm-up"):
            torch.func.vmap(torch.func.jacrev(torch.sin))(torch.ones(2, 2))  # whatever the model, torch.func loads
            try:
                model, x = models.build(self.model_defs[case.model], case.sizes._replace(batch=2), device,
                                        torch.float32)
                reference.reference(model, x)
                measure.peak_memory(lambda: model(x), device)
            except Exception:  # a model that cannot be built is measured (and reported) per case
                return
            for name in names:
                try:
                    strategies.REGISTRY[name](model, x)
                except Exception:
                    pass
