"""torch.func.vmap(torch.func.jacrev(f, chunk_size=k)) where f runs the model on one sample: time traded for memory.

jacrev vmaps its VJP over the out basis; with chunk_size=k it does that k rows at a time (ceil(out/k) sequential
vmapped VJPs, then a cat; k=1 is a plain loop, see torch.func.jacrev's docs). Here k = ceil(out/4): four chunks, so the
vectorized cotangents and backward activations are about a quarter of vmap_jacrev's. Cost: the same
O(out·B·H·(in+out)) work as vmap_jacrev in 4 passes, O(ceil(out/4)·B·H) memory.
"""

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes, itemsize, quarter_chunk


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    chunks = sizes.batch * sizes.out_dim * sizes.in_dim * itemsize(dtype)  # [B, out, in] chunk results before the cat
    return chunks + activations_bytes(sizes, dtype, copies=quarter_chunk(sizes.out_dim) + 1)


@register(independent_samples=True, differentiable=True,
          cost="vmapped reverse mode: out VJPs per sample in 4 chunks of ceil(out/4)", memory_estimate=_memory)
def vmap_jacrev_chunked(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap(torch.func.jacrev(model, chunk_size=ceil(out/4))) with the model seeing single samples."""

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return model(xi.unsqueeze(0)).squeeze(0)

    x = x.detach()
    with torch.no_grad():
        out_dim = model(x[:1]).numel()  # jacrev needs k before it sees the output: one sample's forward sizes it
    with torch.set_grad_enabled(create_graph):  # torch.func transforms ignore the outer no_grad, not J's graph
        return vmap(jacrev(one_sample, chunk_size=quarter_chunk(out_dim)))(x)  # [B, out, in]
