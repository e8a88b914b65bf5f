"""Forward over forward: the second directional derivative along each input direction, vmapped over the basis.

d²/dt² model(x + t·e_i) at t = 0 is H[b, o, i, i] (e_i broadcast over the batch: valid when row b depends on x[b]
alone): a jvp of a jvp, no backward pass at all, the idea behind forward Laplacians and Taylor mode. vmap runs the in
directions as one pass carrying 2·in tangents. Cost O(in·B·H·(H + out)) (about 3·in forward passes of work), memory
O(in·B·H).

Wrong through nn.LayerNorm in torch 2.14, without any error: layer_norm's forward-mode derivative is wrong when
differentiated again (pytorch/pytorch#196700); validation marks it `wrong`. Runs with grad mode on and, without
create_graph, the parameters detached (_common.nested_ad_model says why).
"""

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=3 * sizes.in_dim + 1, quantity="laplacian")


@register(quantity="laplacian", independent_samples=True, differentiable=True,
          cost="1 fwd with in pairs of tangents vmapped (forward over forward)", memory_estimate=_memory)
def laplacian_jvp_jvp(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap over e_i of jvp(lambda t: jvp(forward, (t,), (e_i,))[1], (x,), (e_i,)): d²/dt² along e_i."""
    x = x.detach()
    forward = nested_ad_model(model, create_graph)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)  # [in, in]

    def curvature(e: Tensor) -> Tensor:  # [in] -> [B, out] == H[:, :, i, i]
        tangent = e.expand_as(x)  # [B, in]
        return jvp(lambda t: jvp(forward, (t,), (tangent,))[1], (x,), (tangent,))[1]

    with torch.enable_grad():  # see nested_ad_model; Δ has a graph only with create_graph
        return vmap(curvature)(eye).sum(0)  # [B, out]
