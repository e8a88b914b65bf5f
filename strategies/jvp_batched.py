"""Forward mode over the whole batch: torch.func.vmap over the in basis of torch.func.jvp(model, (x,), (e_i,)).

The tangent e_i is broadcast over the batch, so one JVP gives column i of every sample's Jacobian at once (valid when
row b depends on x[b] alone): the forward-mode twin of grad_batched. Cost: 1 forward pass carrying in tangents,
vmapped, O(in·B·H·(in+out)) work, O(in·B·H) memory and no backward graph. Result (in, B, out) -> (B, out, in).
"""

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.in_dim + 1)


@register(independent_samples=True, differentiable=True, cost="1 fwd with in tangents vmapped (forward mode)",
          memory_estimate=_memory)
def jvp_batched(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap of torch.func.jvp over the in one-hot tangents, each broadcast over the batch."""
    x = x.detach()
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)  # [in, in]

    def column(e: Tensor) -> Tensor:  # [in] -> [B, out] == J[:, :, i]
        return jvp(model, (x,), (e.expand_as(x),))[1]

    with torch.set_grad_enabled(create_graph):  # torch.func transforms ignore the outer no_grad, not J's graph
        jac = vmap(column)(eye)  # [in, B, out]
    return jac.permute(1, 2, 0)  # [B, out, in]
