"""Cases not run at all, decided before anything is built: the memory budget, and what smaller shapes predicted.

`over_budget`: the strategy's memory estimate (times TRAIN_MEMORY_FACTOR in train mode) is above the device's budget.
`skipped`: a smaller shape of the same strategy, device, model, dtype and mode ran out of time or memory, so this
one (at least as large on every axis) would too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.harness import measure, modes
from bench.schema import PREDICTS_LARGER, Sizes, fmt_bytes
from bench.spec.grid import Case
from strategies import Strategy
from strategies._common import activations_bytes


def default_memory_estimate(sizes: Sizes, dtype: torch.dtype) -> int:
    """For strategies that declare none: two forward passes' activations and the result."""
    return activations_bytes(sizes, dtype, copies=2)


def predicted_memory(strategy: Strategy, case: Case) -> int:
    """Bytes one call of this case is expected to need beyond the model and the input."""
    estimate = strategy.memory_estimate or default_memory_estimate
    return estimate(case.sizes, getattr(torch, case.dtype)) * (modes.TRAIN_MEMORY_FACTOR if case.mode == "train"
                                                                 else 1)


Lineage = tuple[str, str, str, str, str]  # (strategy, device, model, dtype, mode): failures predict within one


@dataclass
class SkipPolicy:
    """The budget of each device and the failures seen so far; `reason` decides before a case runs."""

    memory_budget_bytes: int | None  # MEMORY_BUDGET=, or None for `memory_fraction` of the free memory
    memory_fraction: float
    _budget: dict[str, int] = field(default_factory=dict)
    _failed: dict[Lineage, list[tuple[Sizes, str, str]]] = field(default_factory=dict)  # sizes, shape id, status

    def budget(self, device: str) -> int:
        if device not in self._budget:
            self._budget[device] = self.memory_budget_bytes or int(self.memory_fraction
                                                                   * measure.available_memory(device))
        return self._budget[device]

    def reason(self, strategy: Strategy, case: Case, device: str, predicted_bytes: int) -> tuple[str, str] | None:
        """(status, message) of a case that must not run, or None."""
        for sizes, shape, status in self._failed.get(_lineage(strategy, case, device), []):
            if all(a >= b for a, b in zip(case.sizes, sizes, strict=True)):
                return "skipped", f"not run: at least as large as {shape}, which ended in {status}"
        if predicted_bytes > self.budget(device):
            return "over_budget", (f"predicted {fmt_bytes(predicted_bytes)} > memory budget "
                                   f"{fmt_bytes(self.budget(device))}")
        return None

    def note(self, strategy: Strategy, case: Case, device: str, status: str, predicts_larger: bool) -> None:
        """Remember a failure that predicts the same failure for larger shapes (out of memory, a call over time)."""
        if status in PREDICTS_LARGER and predicts_larger:
            self._failed.setdefault(_lineage(strategy, case, device), []).append((case.sizes, case.shape_id, status))


def _lineage(strategy: Strategy, case: Case, device: str) -> Lineage:
    return strategy.name, device, case.model, case.dtype, case.mode
