"""torch.func.vmap(torch.func.jacrev(torch.func.jacrev(f))) where f runs the model on one sample: reverse over reverse.

Per sample, out VJPs for the gradient, then out·in VJPs through that backward graph, all vectorized: cost
O(out·in·B·H·(H + in)), memory O(out·in·B·H) (the vectorized double backward). Runs with grad mode on and, without
create_graph, the parameters detached (_common.nested_ad_model says why).
"""

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=2 * sizes.out_dim * (sizes.in_dim + 1) + 1,
                              quantity="hessian")  # the double backward keeps the first backward's graph too


@register(quantity="hessian", independent_samples=True, differentiable=True,
          cost="vmapped jacrev(jacrev): out·in VJPs of out VJPs per sample", memory_estimate=_memory)
def hessian_vmap_jacrev_jacrev(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap(torch.func.jacrev(torch.func.jacrev(model))) with the model seeing single samples."""

    forward = nested_ad_model(model, create_graph)

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return forward(xi.unsqueeze(0)).squeeze(0)

    with torch.enable_grad():  # see nested_ad_model; H has a graph only with create_graph
        return vmap(jacrev(jacrev(one_sample)))(x.detach())  # [B, out, in, in]
