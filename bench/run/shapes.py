"""What every strategy of one shape on one device shares, prepared once: the model, the input, the forward time and
the float64 reference; the warm-up that keeps lazy loading out of every time limit; and a quiet heap.

The heap: a run process holds far more Python objects than the user's program (torch.func, dynamo and inductor
state after compiling: ~0.5 M objects), and every full collection of Python's cyclic garbage collector walks them
all, ~0.2 s here. A Python-heavy strategy (linearize_batched: make_fx tracing) triggers such collections inside its
own calls, so in a run it measured up to ×5 slower than in a fresh process. Before a shape is measured, the objects
alive are moved out of the collector's reach (gc.freeze): collections then walk only what the calls create, as in
a program that has just started. Frozen objects are still freed by reference counting; the cyclic garbage a compiled
shape leaves (dynamo's graphs after a reset) is collected in full before the next shape is frozen.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import strategies
from bench.run import compiling, measure, models, reference
from bench.run.grid import Case
from bench.run.measure import Phases


@dataclass
class PreparedShape:
    """The shared part of a shape's cases. A shape that could not be prepared carries the status and message every
    strategy of it gets."""

    case: Case
    device: str
    model: nn.Module | None = None
    x: Tensor | None = None  # [B, in]
    forward_median_s: float | None = None
    reference: reference.Reference | reference.SecondOrderReference | None = None
    status: str = "ok"
    message: str = ""

    @property
    def coupled(self) -> bool | None:
        return self.reference.coupled if self.reference else None


ForwardTimer = Callable[[Callable[[], object]], float]  # times model(x) under no_grad: seconds per call
COMPILED_SHAPES_PER_COLLECTION = 8


class ShapeCache:
    """Prepares each shape once (a run goes shape by shape: the last one is kept) and warms each model up once."""

    def __init__(self, model_defs: dict[str, models.ModelDef], strategy_names: list[str], time_budget_s: float,
                 memory_budget: Callable[[str], int], phases: Phases):
        self.model_defs = model_defs
        self.strategy_names = strategy_names
        self.time_budget_s = time_budget_s
        self.memory_budget = memory_budget  # device -> bytes
        self.phases = phases
        self._shape: PreparedShape | None = None
        self._warm: set[tuple[str, str]] = set()  # (device, model) warmed up
        self._compiled_shapes = 0  # shapes that compiled since the last full collection
        self._compiled_now = False  # the current shape compiled: dynamo's caches are reset before the next one
        self._collected = False  # the first shape collects in full

    def prepare(self, case: Case, device: str, time_forward: ForwardTimer | None = None,
                with_reference: bool = True) -> PreparedShape:
        """Build (once per shape and device) the model and input; time the forward pass with `time_forward` and
        compute the float64 reference when asked (the measuring pass needs both; re-timing needs neither)."""
        if self._shape is not None and (self._shape.case, self._shape.device) == (case, device):
            return self._shape
        self._shape = None  # free the previous shape's tensors before building the next
        measure.free(device)
        with self.phases("heap"):
            self._quiet_heap()
        shape = PreparedShape(case, device)
        try:
            with measure.time_limit(max(10 * self.time_budget_s, 30), "building the model and reference"):
                self._build(shape, time_forward, with_reference)
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

    def compiled(self) -> None:
        """A compiled strategy compiled for the current shape."""
        if not self._compiled_now:
            self._compiled_shapes += 1
        self._compiled_now = True

    def freeze(self) -> None:
        """Move what is alive now out of the collector's reach, right before a shape is timed: compiling imports
        inductor and builds graphs, and their objects would otherwise be walked by every full collection."""
        gc.collect(1)
        gc.freeze()

    def _quiet_heap(self) -> None:
        """Between shapes: the last shape's garbage collected, what is alive frozen. Frozen objects that die in a
        cycle (a compiled shape's graphs after dynamo's reset) wait for the full collection every
        COMPILED_SHAPES_PER_COLLECTION compiled shapes (~0.3 s over the heap of a compiling process)."""
        if self._compiled_now:
            compiling.reset()  # each compiled strategy compiles once per shape: never near the recompile limit
            self._compiled_now = False
        if not self._collected or self._compiled_shapes >= COMPILED_SHAPES_PER_COLLECTION:
            gc.unfreeze()
            self._collected, self._compiled_shapes = True, 0
        gc.collect()
        gc.freeze()

    def _build(self, shape: PreparedShape, time_forward: ForwardTimer | None, with_reference: bool) -> None:
        case = shape.case
        with self.phases("models"):
            model, x = models.build(self.model_defs[case.model], case.sizes, shape.device, getattr(torch, case.dtype))
            problem = models.run_problem(model, x, case.sizes.out_dim)
            if problem:
                raise reference.ModelProblem(problem + (" (a one-sample batch)" if case.sizes.batch == 1 else ""))
            if time_forward is not None:
                with torch.no_grad():
                    shape.forward_median_s = time_forward(lambda: model(x))
        if with_reference:
            with self.phases("references"):
                shape.reference = reference.of_quantity(case.quantity, model, x, self.memory_budget(shape.device),
                                                        hidden=case.sizes.hidden, train=case.mode == "train")
        shape.model, shape.x = model, x

    def warm_up(self, case: Case, device: str, names: list[str] | None = None) -> None:
        """Call every strategy (or those named) once on a two-sample version of the case's model, outside any time
        limit: lazy imports (torch.func pulls in torch._dynamo and sympy), CUDA context and kernel loading happen
        here, never inside a timed or time-limited call (an import cut off by a time limit leaves torch
        half-initialised)."""
        if (device, case.model) in self._warm:
            return
        self._warm.add((device, case.model))
        with self.phases("warm-up"):
            torch.func.vmap(torch.func.jacrev(torch.sin))(torch.ones(2, 2))  # whatever the model, torch.func loads
            try:
                model, x = models.build(self.model_defs[case.model], case.sizes._replace(batch=2), device,
                                        torch.float32)
                reference.reference(model, x)
                measure.peak_memory(lambda: model(x), device)
            except Exception:  # a model that cannot be built is measured (and reported) per case
                return
            for name in names or self.strategy_names:
                if strategies.REGISTRY[name].compiled:
                    continue  # compiling is the case's own setup, timed apart
                try:
                    strategies.REGISTRY[name](model, x)
                except Exception:
                    pass
