"""torch.func.vmap(torch.func.jacfwd(torch.func.jacfwd(f))) where f runs the model on one sample: forward over forward.

Per sample, in JVPs for the Jacobian, then in JVPs of each: in² tangent pairs carried through one forward pass, no
backward graph. Cost O(in²·B·H·(H + out)), memory O(in²·B·H): cheap for the few coordinates of a PINN, quadratic in in.

Wrong through nn.LayerNorm in torch 2.14, without any error: layer_norm's forward-mode derivative is wrong when
differentiated again (pytorch/pytorch#196700); validation marks it `wrong`. Runs with grad mode on and, without
create_graph, the parameters detached (_common.nested_ad_model says why).
"""

import torch
from torch import Tensor, nn
from torch.func import jacfwd, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=sizes.in_dim * (sizes.in_dim + 1) + 1, quantity="hessian")


@register(quantity="hessian", independent_samples=True, differentiable=True,
          cost="vmapped jacfwd(jacfwd): in² JVP pairs per sample", memory_estimate=_memory)
def hessian_vmap_jacfwd_jacfwd(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap(torch.func.jacfwd(torch.func.jacfwd(model))) with the model seeing single samples."""

    forward = nested_ad_model(model, create_graph)

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return forward(xi.unsqueeze(0)).squeeze(0)

    with torch.enable_grad():  # see nested_ad_model; H has a graph only with create_graph
        return vmap(jacfwd(jacfwd(one_sample)))(x.detach())  # [B, out, in, in]
