"""Tuned: the strategy autotune picked, as a function. tuned(x) returns J (or H, or the Laplacian) by the pick for
x's shape, dtype, device and the model's train/eval mode, tuning once more for one it has not seen (like cuDNN's
benchmark mode)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.tuning.explain import Signature, explain
from bench.tuning.options import AutotuneError, Settings
from bench.tuning.pick import Pick
from bench.tuning.tuning import tune
from strategies import REGISTRY


class Tuned:
    """The strategy autotune picked, as a function: tuned(x) -> J (B, out, in), or H or the Laplacian for a
    second-order quantity. Tunes again for an input it has not seen (shape, dtype, device, or the model switched
    between train and eval)."""

    def __init__(self, model: nn.Module, settings: Settings, example_x: Tensor):
        self.model = model
        self.settings = settings
        self.picks: dict[Signature, Pick] = {}
        self.pick = self._pick_for(example_x)

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def quantity(self) -> str:
        return self.settings.quantity

    @property
    def strategy(self) -> str:
        return self.pick.strategy

    @property
    def verdict(self) -> str:
        return self.pick.verdict

    @property
    def tied_with(self) -> list[str]:
        return self.pick.tied_with

    @property
    def times(self) -> dict[str, float]:
        return self.pick.times

    def __call__(self, x: Tensor) -> Tensor:
        """J (B, out, in) of the model at x (H or the Laplacian for a second-order quantity); in train mode with its
        graph (create_graph=True)."""
        self.pick = self._pick_for(x)
        strategy = REGISTRY[self.pick.strategy]
        with torch.enable_grad():
            jac = strategy(self.model, x, create_graph=self.mode == "train")
        return jac.unsqueeze(1) if strategy.returns == "output_sum" else jac  # J.sum(1) is J at out = 1: (B, 1, in)

    def _pick_for(self, x: Tensor) -> Pick:
        if not isinstance(x, Tensor) or x.dim() != 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise AutotuneError(f"the input must be a (B, in) tensor, not {got}")
        signature = (tuple(x.shape), x.dtype, x.device, self.model.training)
        if signature not in self.picks:
            self.picks[signature] = tune(self.model, x, self.settings)
        return self.picks[signature]

    def explain(self) -> str:
        """What was refused and why, who raced, the verdict, and whether the pick came from the cache or a run."""
        return explain(self.pick, self.model, self.settings, next(k for k, v in self.picks.items() if v is self.pick))

    def __repr__(self) -> str:
        tie = f" with {', '.join(self.tied_with)}" if self.verdict == "tie" else ""
        what = self.mode if self.quantity == "jacobian" else f"{self.quantity}, {self.mode}"
        return f"<Tuned {self.strategy} ({self.verdict}{tie}, {self.pick.source}) for {what}>"
