"""The Laplacian by collapsed Taylor mode, from jet-for-pytorch (github.com/f-dangel/torch-jet, "Collapsing Taylor
Mode Automatic Differentiation", NeurIPS 2025), as a jacobench strategy plugin.

jet traces the per-sample function (torch.fx, make_fx), overloads every op with its second-order Taylor rule, and
`simplify` collapses the in second-order jets of the Laplacian into one sum propagated forward: one forward pass
carrying the value, in first-order coefficients and a single summed second-order one, per sample; torch.func.vmap
runs it over the batch. Cost about (in + 2) forward passes, memory O(in·B·H); the trace (seconds) happens on the first
call for each model, input width, dtype and device and is cached.

jet-for-pytorch needs Python >= 3.12 (this project runs 3.11): where it cannot be imported the strategy is registered
all the same and raises Unsupported saying why. Both of jet's APIs are handled: `jet.laplacian.laplacian(f, mock_x)`
(after 0.0.1) and the `jet.laplacian.Laplacian(f, dummy_x)` module of release 0.0.1; each returns (f(x), first-order
coefficients, Δf(x)) for one sample.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from strategies import Strategy, Unsupported
from strategies._common import second_order_bytes

JET_PYTHON = (3, 12)  # jet-for-pytorch's requires-python

# model -> {(in_dim, dtype, device): batched Laplacian function}: jet traces once per model and input signature
_TRACED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Callable[[Tensor], Tensor]]] = weakref.WeakKeyDictionary()


def _import_jet() -> tuple[object, object]:
    """jet.laplacian and jet.simplify, or Unsupported saying why they cannot be used here."""
    if tuple(sys.version_info[:2]) < JET_PYTHON:
        raise Unsupported(f"jet-for-pytorch needs Python >= {JET_PYTHON[0]}.{JET_PYTHON[1]}; this is Python "
                          f"{sys.version_info[0]}.{sys.version_info[1]}")
    try:
        import jet.laplacian
        import jet.simplify
    except ImportError as exc:
        raise Unsupported(f"jet-for-pytorch cannot be imported ({exc}): pip install jet-for-pytorch") from None
    return jet.laplacian, jet.simplify


def _trace(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """The per-sample Laplacian of `model` as jet builds and collapses it, vmapped: [B, in] -> [B, out]."""
    laplacian_module, simplify_module = _import_jet()
    mock = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)  # [in]: jet traces one sample

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return model(xi.unsqueeze(0)).squeeze(0)

    try:
        if hasattr(laplacian_module, "laplacian"):  # the function transform (after 0.0.1)
            lap_f = simplify_module.simplify(laplacian_module.laplacian(one_sample, mock), mock)
        else:  # release 0.0.1: an nn.Module
            lap_f = simplify_module.simplify(laplacian_module.Laplacian(one_sample, mock))
    except Exception as exc:  # operator coverage: jet has no Taylor rule for some op of this model
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise Unsupported(f"jet cannot trace this model: {type(exc).__name__}: {first}") from None
    batched = torch.func.vmap(lap_f)
    return lambda t: batched(t)[2]  # (f, first-order coefficients, Laplacian) -> [B, out]


def _laplacian(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Collapsed Taylor mode (jet-for-pytorch): the Laplacian of each sample by one forward pass, vmapped."""
    key = (x.shape[1], x.dtype, x.device)
    traced = _TRACED.setdefault(model, {})
    if key not in traced:
        traced[key] = _trace(model, x)
    # jet's traced graph uses the model's own parameters (its PINN example trains through it with Adam; not verified
    # here, on Python 3.11): with grad mode on, the Laplacian carries a graph to them
    with torch.set_grad_enabled(create_graph):
        return traced[key](x.detach())  # [B, out]


def _memory(sizes: tuple[int, int, int, int], dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=sizes[2] + 3, quantity="laplacian")


laplacian_jet = Strategy(
    name="laplacian_jet",
    fn=_laplacian,
    quantity="laplacian",
    independent_samples=True,  # vmap over single samples
    differentiable=True,
    summary="jet-for-pytorch: collapsed Taylor mode, one forward pass per sample carrying in + 2 coefficients",
    cost="1 fwd with in first-order and 1 collapsed second-order Taylor coefficients, vmapped; traced once",
    memory_estimate=_memory,
)
