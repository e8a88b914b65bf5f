"""torch.autograd.functional.jacobian of the whole batch, then the diagonal over the two batch dimensions.

Cost: B·out backward passes and a (B, out, B, in) result: O(B²·out·in) memory, a factor B wasted.
Exact even when samples are coupled (e.g. BatchNorm in train mode).
"""

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes, itemsize


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    full = sizes.batch * sizes.out_dim * sizes.batch * sizes.in_dim * itemsize(dtype)  # [B, out, B, in]
    return full + activations_bytes(sizes, dtype)


@register(independent_samples=False, differentiable=True, cost="B·out bwd, O(B²·out·in) memory",
          memory_estimate=_memory)
def jacobian_diagonal(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.autograd.functional.jacobian(model, x) (B, out, B, in), then its batch diagonal."""
    full = torch.autograd.functional.jacobian(model, x.detach(), create_graph=create_graph)  # [B, out, B, in]
    diag = torch.diagonal(full, dim1=0, dim2=2)  # [out, in, B]
    return diag.permute(2, 0, 1).contiguous()  # [B, out, in]
