"""Nested autograd.grad with create_graph: per output the per-sample gradient, then per input one more reverse pass.

Row b of the gradient of y[:, o].sum() is d y[b, o] / dx[b] (valid when row b depends on x[b] alone); differentiating
its column i again gives H[:, o, i, :]. Cost: 1 forward + out backward passes that keep their graph + out·in double
backward passes, O(out·in·B·H·(H + in)), a Python loop of out·in kernel sequences; memory O(B·H) graphs and the
(B, out, in, in) result.
"""

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import register
from strategies._common import leaf, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    # y's graph, g's graph (create_graph keeps the backward's intermediates) and one row's double backward
    return second_order_bytes(sizes, dtype, copies=8, quantity="hessian")


@register(quantity="hessian", independent_samples=True, differentiable=True,
          cost="1 fwd + out bwd with graph + out·in double bwd", memory_estimate=_memory)
def hessian_grad_loop(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.grad(create_graph=True) per output, then autograd.grad per input of that gradient, stacked."""
    with torch.enable_grad():  # the nested reverse passes need y's graph even when called under no_grad
        return _nested_grads(model, leaf(x), create_graph)


def _nested_grads(model: nn.Module, x: Tensor, create_graph: bool) -> Tensor:
    y = model(x)  # [B, out]
    outputs = []
    for o in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, o].sum(), x, retain_graph=True, create_graph=True)  # [B, in]
        rows = []
        for i in range(x.shape[1]):
            if not g.requires_grad:  # the gradient does not depend on x (an affine model): no curvature
                rows.append(torch.zeros_like(x))
                continue
            (h,) = torch.autograd.grad(g[:, i].sum(), x, retain_graph=True, create_graph=create_graph,
                                       allow_unused=True)  # [B, in] == H[:, o, i, :]
            rows.append(torch.zeros_like(x) if h is None else h)
        outputs.append(torch.stack(rows, dim=1))  # [B, in, in]
    hess = torch.stack(outputs, dim=1)  # [B, out, in, in]
    return hess if create_graph else hess.detach()
