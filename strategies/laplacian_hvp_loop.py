"""A Python loop of forward-over-reverse Hessian-vector products over the input basis, keeping only the diagonal.

The per-sample gradients of every output come from one reverse pass over the batch sum, jacrev(model(x).sum(0)):
(out, B, in). Its JVP along e_i (broadcast over the batch) is column i of every sample's Hessian (valid when row b
depends on x[b] alone); entry i of it is H[b, o, i, i], summed into the Laplacian. Cost: in passes of 1 forward + 1
backward vmapped over out, with one tangent: O(in·out·B·H·(H + in)); memory O(out·B·H), one HVP at a time. Runs
with grad mode on and, without create_graph, the parameters detached (_common.nested_ad_model says why).
Training through it (the PINN step) gets wrong parameter gradients through nn.LayerNorm in torch 2.14 (layer_norm's
forward-mode derivative, differentiated again: pytorch/pytorch#196700); validation marks it `wrong`.
"""

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=2 * (sizes.out_dim + 1), quantity="laplacian")


@register(quantity="laplacian", independent_samples=True, differentiable=True,
          cost="in HVPs (1 fwd + 1 bwd vmapped over out, with a tangent), one at a time", memory_estimate=_memory)
def laplacian_hvp_loop(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Loop over e_i of torch.func.jvp(jacrev(model(x).sum(0)), e_i), keeping entry i: the Hessian's diagonal."""
    x = x.detach()
    forward = nested_ad_model(model, create_graph)

    def gradients(t: Tensor) -> Tensor:  # [B, in] -> [out, B, in]: per-sample gradient of each output
        return jacrev(lambda u: forward(u).sum(0))(t)

    laplacian = None
    with torch.enable_grad():  # see nested_ad_model; Δ has a graph only with create_graph
        for i in range(x.shape[1]):
            tangent = torch.zeros_like(x)  # [B, in]
            tangent[:, i] = 1
            diagonal = jvp(gradients, (x,), (tangent,))[1][:, :, i]  # [out, B] == H[:, :, i, i]
            laplacian = diagonal if laplacian is None else laplacian + diagonal
    return laplacian.T  # [B, out]
