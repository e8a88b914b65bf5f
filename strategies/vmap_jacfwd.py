"""torch.func.vmap(torch.func.jacfwd(f)) where f runs the model on one sample.

Forward mode per sample, vectorized: cost O(in·B·H·(in+out)), memory O(in·B·H). Best when in < out.
"""

import torch
from torch import Tensor, nn
from torch.func import jacfwd, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.in_dim + 1)


@register(independent_samples=True, differentiable=True, cost="vmapped forward mode: in JVPs per sample",
          memory_estimate=_memory)
def vmap_jacfwd(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap(torch.func.jacfwd(model)) with the model seeing single samples."""

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return model(xi.unsqueeze(0)).squeeze(0)

    with torch.set_grad_enabled(create_graph):  # torch.func transforms ignore the outer no_grad, not J's graph
        return vmap(jacfwd(one_sample))(x.detach())  # [B, out, in]
