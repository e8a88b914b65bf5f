"""One autograd.grad(..., is_grads_batched=True) over the out one-hot grad_outputs (vmapped backward).

Cost: 1 forward + 1 vmapped backward of batch out, O(out·B·H·(in+out)) work, O(out·B·H) memory.
"""

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes, leaf


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.out_dim + 1)


@register(independent_samples=True, differentiable=True, cost="1 fwd + 1 bwd vmapped over out",
          memory_estimate=_memory)
def grad_batched(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.grad with is_grads_batched=True over the identity's out rows."""
    x = leaf(x)
    y = model(x)  # [B, out]
    out = y.shape[1]
    eye = torch.eye(out, dtype=y.dtype, device=y.device)  # [out, out]
    grad_outputs = eye.unsqueeze(1).expand(out, y.shape[0], out)  # [out, B, out]
    (g,) = torch.autograd.grad(y, x, grad_outputs=grad_outputs, is_grads_batched=True,
                               create_graph=create_graph)  # [out, B, in]
    return g.transpose(0, 1)  # [B, out, in]
