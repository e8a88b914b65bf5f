"""The batch-sum trick: functional.jacobian(lambda x: model(x).sum(0), x, vectorize=True).

Sum over the batch first (valid when row b depends on x[b] alone), so the Jacobian is (out, B, in), not
(B, out, B, in). Cost: 1 forward + 1 backward vmapped over out, O(out·B·H) memory.
"""

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.out_dim + 1)


@register(independent_samples=True, differentiable=True, cost="1 fwd + 1 bwd vmapped over out",
          memory_estimate=_memory)
def jacobian_sum(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.functional.jacobian of model(x).sum(0), vectorize=True."""
    jac = torch.autograd.functional.jacobian(lambda t: model(t).sum(0), x.detach(), vectorize=True,
                                             create_graph=create_graph)  # [out, B, in]
    return jac.transpose(0, 1)  # [B, out, in]
