"""autograd.grad(y, x, grad_outputs=ones_like(y)): one backward pass, returns J.sum(1), not J.

Cost: 1 forward + 1 backward, O(B·H·(in+out)). Shape (B, in): the Jacobian only when out == 1.
"""

import torch
from torch import Tensor, nn

from strategies import register
from strategies._common import leaf


@register(returns="output_sum", independent_samples=True, differentiable=True, cost="1 fwd + 1 bwd")
def grad_summed(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.grad with grad_outputs=ones_like(y): the sum over outputs, not the Jacobian."""
    x = leaf(x)
    y = model(x)  # [B, out]
    (g,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), create_graph=create_graph)  # [B, in] == J.sum(1)
    return g
