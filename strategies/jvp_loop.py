"""Forward-mode AD, one torch.func.jvp per input dimension with a one-hot tangent on every row.

Cost: in forward passes with tangents, O(in·B·H·(in+out)); no backward graph is stored. Best when in is small.
"""

import torch
from torch import Tensor, nn
from torch.func import jvp

from strategies import register


@register(independent_samples=True, differentiable=True, cost="in JVPs (forward mode)")
def jvp_loop(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.jvp once per input dimension (one-hot tangent), stacked."""
    x = x.detach()
    columns = []
    with torch.set_grad_enabled(create_graph):  # torch.func.jvp ignores the outer no_grad, not J's graph
        for i in range(x.shape[1]):
            tangent = torch.zeros_like(x)  # [B, in]
            tangent[:, i] = 1
            _, dy = jvp(model, (x,), (tangent,))  # [B, out] == J[:, :, i]
            columns.append(dy)
    return torch.stack(columns, dim=2)  # [B, out, in]
