"""The batch-sum trick in torch.func: torch.func.jacrev(lambda t: model(t).sum(0))(x), (out, B, in) -> (B, out, in).

Sum over the batch first (valid when row b depends on x[b] alone), so jacrev sees one function R^(B·in) -> R^out:
1 forward + 1 backward vmapped over the out basis, O(out·B·H·(in+out)) work, O(out·B·H) memory. The torch.func form
of jacobian_sum (the PyTorch "Jacobians, Hessians, hvp, vhp" tutorial's `predict_with_output_summed`).
"""

import torch
from torch import Tensor, nn
from torch.func import jacrev

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.out_dim + 1)


@register(independent_samples=True, differentiable=True, cost="1 fwd + 1 bwd vmapped over out (torch.func)",
          memory_estimate=_memory)
def func_sum_jacrev(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.jacrev of model(x).sum(0) over the whole batch, transposed."""
    with torch.set_grad_enabled(create_graph):  # torch.func transforms ignore the outer no_grad, not J's graph
        jac = jacrev(lambda t: model(t).sum(0))(x.detach())  # [out, B, in]
    return jac.transpose(0, 1)  # [B, out, in]
