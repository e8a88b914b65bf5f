"""One autograd.grad per output column with a one-hot grad_outputs, stacked.

Cost: 1 forward + out backward passes, O(out·B·H·(in+out)); the Python loop costs ~out kernel launches per layer.
"""

import torch
from torch import Tensor, nn

from strategies import register
from strategies._common import leaf


@register(independent_samples=True, differentiable=True, cost="1 fwd + out bwd")
def grad_loop(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.grad once per output column (one-hot grad_outputs, retain_graph)."""
    x = leaf(x)
    y = model(x)  # [B, out]
    rows = []
    for o in range(y.shape[1]):
        one_hot = torch.zeros_like(y)
        one_hot[:, o] = 1
        (g,) = torch.autograd.grad(y, x, grad_outputs=one_hot, retain_graph=True, create_graph=create_graph)  # [B, in]
        rows.append(g)
    return torch.stack(rows, dim=1)  # [B, out, in]
