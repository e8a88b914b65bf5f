"""torch.func.vmap(torch.func.jacrev(f)) where f runs the model on one sample.

Reverse mode per sample, vectorized: cost O(out·B·H·(in+out)), memory O(out·B·H). Best when out < in.
"""

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.out_dim + 1)


@register(independent_samples=True, differentiable=True, cost="vmapped reverse mode: out VJPs per sample",
          memory_estimate=_memory)
def vmap_jacrev(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap(torch.func.jacrev(model)) with the model seeing single samples."""

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return model(xi.unsqueeze(0)).squeeze(0)

    with torch.set_grad_enabled(create_graph):  # torch.func transforms ignore the outer no_grad, not J's graph
        return vmap(jacrev(one_sample))(x.detach())  # [B, out, in]
