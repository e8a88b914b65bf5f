"""The tolerance a strategy's result is held to against the float64 reference: its dtype's, or a lower precision's
where the model computes in one inside (CPU autocast, a cast in forward). Used where results are validated
(bench/harness/reference.py) and where a user's model is first probed (bench/spec/own_model.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Relative tolerance per dtype: max|J - J_ref| <= RTOL[dtype] * max|J_ref|.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
LOWER_PRECISION = (torch.float16, torch.bfloat16)  # what a model may compute in inside, finest first
FORWARD_MARGIN = 10  # a derivative carries a few times the round-off of the output it is derived from


def forward_error(model: nn.Module, x: Tensor, model64: nn.Module, x64: Tensor) -> float:
    """max |model(x) - model64(x64)| / max |model64(x64)|: how far the model's own output, in its dtype, is from its
    float64 copy's."""
    if x.dtype == torch.float64:
        return 0.0
    with torch.no_grad():
        y, y64 = model(x).double(), model64(x64)
    return (y - y64).abs().max().item() / (y64.abs().max().item() or 1.0)


def tolerance_dtype(dtype: torch.dtype, forward_error: float) -> torch.dtype:
    """The dtype whose tolerance a result of this dtype is held to: its own, unless the model's own output is
    further from its float64 copy's than that tolerance (it computes below its dtype inside: autocast, a cast in
    forward), then the finest lower precision whose tolerance is FORWARD_MARGIN x that error or more (the coarsest
    one when only its tolerance covers the error: a float64 copy that differs by more is another model). A user's MLP
    under CPU autocast (bfloat16 matmuls) returned float32 outputs 0.19-0.49% off its float64 copy's (B = 1 to
    4096); every strategy's J was off by 0.29-0.74% of its largest entry (its train-mode gradient up to 10%), and
    all 178 of its cases were `wrong` at float32's tolerance (1e-4 of it)."""
    if forward_error <= RTOL.get(dtype, 1e-4):
        return dtype
    coarsest = LOWER_PRECISION[-1]  # within its tolerance but not its margin: still below the dtype, not another model
    fallback = coarsest if forward_error <= RTOL[coarsest] else dtype
    return next((lower for lower in LOWER_PRECISION if FORWARD_MARGIN * forward_error <= RTOL[lower]), fallback)


def precision_note(dtype: torch.dtype, forward_error: float) -> str:
    """What a check says when it holds a result to a lower precision's tolerance ("" when not)."""
    held = tolerance_dtype(dtype, forward_error)
    if held == dtype:
        return ""
    name, own = str(held).removeprefix("torch."), str(dtype).removeprefix("torch.")
    return (f"held to {name}'s tolerance: the model's own {own} output is {forward_error:.2%} off its float64 output "
            "(it computes in lower precision inside: autocast, or a cast in forward)")
