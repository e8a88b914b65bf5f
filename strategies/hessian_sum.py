"""The batch-sum trick at second order: functional.jacobian of the batch-summed per-sample gradients.

The gradient of model(x).sum(0) is (out, B, in), row b holding d y[b] / dx[b]; summed over the batch it is
S[o, i] = Σ_b dy[b, o] / dx[b, i], and dS[o, i] / dx[b, j] = H[b, o, i, j] (valid when row b depends on x[b] alone).
Both functional.jacobian calls vectorize (vmap over their cotangents): cost 1 forward + 1 backward vmapped over out +
1 double backward vmapped over out·in, memory O(out·in·B·H).
"""

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import register
from strategies._common import second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=2 * sizes.out_dim * (sizes.in_dim + 1) + 1,
                              quantity="hessian")  # the double backward keeps the first backward's graph too


@register(quantity="hessian", independent_samples=True, differentiable=True,
          cost="1 fwd + 1 bwd vmapped over out + 1 double bwd vmapped over out·in", memory_estimate=_memory)
def hessian_sum(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.functional.jacobian (vectorize=True) of the batch sum of jacobian(model(x).sum(0))."""
    jacobian = torch.autograd.functional.jacobian

    def summed_gradient(t: Tensor) -> Tensor:  # [B, in] -> [out, in]
        return jacobian(lambda u: model(u).sum(0), t, create_graph=True, vectorize=True).sum(1)

    hess = jacobian(summed_gradient, x.detach(), create_graph=create_graph, vectorize=True)  # [out, in, B, in]
    return hess.permute(2, 0, 1, 3)  # [B, out, in, in]
