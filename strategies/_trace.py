"""The Laplacian as the trace of a Hessian strategy (not a strategy: the leading underscore keeps it out of the
registry). `register_trace(hessian_x)` registers `laplacian_trace_x`: same cost, memory, sample assumption and
differentiability as the Hessian it takes the trace of, returning (B, out) instead of (B, out, in, in).
"""

from __future__ import annotations

from torch import Tensor, nn

from strategies import Strategy, register

HESSIAN_PREFIX = "hessian_"
TRACE_PREFIX = "laplacian_trace_"


def trace_name(hessian_name: str) -> str:
    """hessian_grad_loop -> laplacian_trace_grad_loop."""
    return TRACE_PREFIX + hessian_name.removeprefix(HESSIAN_PREFIX)


def register_trace(hessian: Strategy) -> Strategy:
    """Register the trace of `hessian` (a registered hessian strategy) as a laplacian strategy."""
    if hessian.quantity != "hessian":
        raise ValueError(f"{hessian.name} computes a {hessian.quantity}, not a hessian")

    def fn(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
        hess = hessian(model, x, create_graph=create_graph)  # [B, out, in, in]
        return hess.diagonal(dim1=2, dim2=3).sum(-1)  # [B, out]

    fn.__doc__ = f"Trace of {hessian.name}: its (B, out, in, in) Hessian, then the sum of each diagonal."
    return register(name=trace_name(hessian.name), quantity="laplacian",
                    independent_samples=hessian.independent_samples, differentiable=hessian.differentiable,
                    cost=f"{hessian.cost}, then the trace", memory_estimate=hessian.memory_estimate,
                    closed_form=hessian.closed_form, peer=hessian.peer)(fn)
