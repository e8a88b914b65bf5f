"""torch.func.vmap(torch.func.hessian(f)) where f runs the model on one sample: jacfwd over jacrev.

Per sample, the gradient by reverse mode (out VJPs) differentiated by forward mode (in JVPs), all vectorized: cost
O(in·out·B·H·(H + in)) in one batched pass, memory O(in·out·B·H) for the tangents of the vectorized backward. Runs
with grad mode on and, without create_graph, the parameters detached (_common.nested_ad_model says why).
Training through it (the PINN step) gets wrong parameter gradients through nn.LayerNorm in torch 2.14 (layer_norm's
forward-mode derivative, differentiated again: pytorch/pytorch#196700); validation marks it `wrong`.
"""

import torch
from torch import Tensor, nn
from torch.func import hessian, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=sizes.in_dim * (sizes.out_dim + 1) + 1, quantity="hessian")


@register(quantity="hessian", independent_samples=True, differentiable=True,
          cost="vmapped jacfwd(jacrev): in JVPs of out VJPs per sample", memory_estimate=_memory)
def hessian_vmap_hessian(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap(torch.func.hessian(model)) with the model seeing single samples (jacfwd over jacrev)."""

    forward = nested_ad_model(model, create_graph)

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return forward(xi.unsqueeze(0)).squeeze(0)

    with torch.enable_grad():  # see nested_ad_model; H has a graph only with create_graph
        return vmap(hessian(one_sample))(x.detach())  # [B, out, in, in]
