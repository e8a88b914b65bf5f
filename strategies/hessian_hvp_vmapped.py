"""Forward-over-reverse Hessian-vector products, vmapped over the input basis (torch.func).

The per-sample gradients of every output come from one reverse pass over the batch sum, jacrev(model(x).sum(0)):
(out, B, in). Its JVP along e_j (broadcast over the batch) is column j of every sample's Hessian (valid when row b
depends on x[b] alone); vmap runs the in JVPs as one. Cost: 1 forward + 1 backward vmapped over out, carrying in
tangents: O(in·out·B·H·(H + in)), memory O(in·out·B·H). Runs with grad mode on and, without create_graph, the
parameters detached (_common.nested_ad_model says why).
Training through it (the PINN step) gets wrong parameter gradients through nn.LayerNorm in torch 2.14 (layer_norm's
forward-mode derivative, differentiated again: pytorch/pytorch#196700); validation marks it `wrong`.
"""

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=sizes.in_dim * (sizes.out_dim + 1) + 1, quantity="hessian")


@register(quantity="hessian", independent_samples=True, differentiable=True,
          cost="1 fwd + 1 bwd vmapped over out, with in tangents (forward over reverse)", memory_estimate=_memory)
def hessian_hvp_vmapped(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap over the in basis of jvp(jacrev(model(x).sum(0)), e_j): forward-over-reverse HVPs."""
    x = x.detach()
    forward = nested_ad_model(model, create_graph)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)  # [in, in]

    def gradients(t: Tensor) -> Tensor:  # [B, in] -> [out, B, in]: per-sample gradient of each output
        return jacrev(lambda u: forward(u).sum(0))(t)

    def column(e: Tensor) -> Tensor:  # [in] -> [out, B, in] == H[:, :, :, j] in (out, B, i) order
        return jvp(gradients, (x,), (e.expand_as(x),))[1]

    with torch.enable_grad():  # see nested_ad_model; H has a graph only with create_graph
        columns = vmap(column)(eye)  # [in_j, out, B, in_i]
    return columns.permute(2, 1, 3, 0)  # [B, out, in_i, in_j]
