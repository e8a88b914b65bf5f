"""torch.func.vmap of a chunked jacfwd (f runs the model on one sample): time traded for memory.

torch.func.jacfwd has no chunk_size (torch 2.14: jacfwd(func, argnums, has_aux, *, randomness)), so this spells out
what jacfwd does, vmap(jvp) over the in basis, with torch.func.vmap(..., chunk_size=k): ceil(in/k) sequential
vmapped JVPs. Here k = ceil(in/4): four chunks, so the vectorized tangents are about a quarter of vmap_jacfwd's.
Cost: the same O(in·B·H·(in+out)) work as vmap_jacfwd in 4 passes, O(ceil(in/4)·B·H) memory.
"""

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes, itemsize, quarter_chunk


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    chunks = sizes.batch * sizes.out_dim * sizes.in_dim * itemsize(dtype)  # [B, out, in] chunk results before the cat
    return chunks + activations_bytes(sizes, dtype, copies=quarter_chunk(sizes.in_dim) + 1)


@register(independent_samples=True, differentiable=True,
          cost="vmapped forward mode: in JVPs per sample in 4 chunks of ceil(in/4)", memory_estimate=_memory)
def vmap_jacfwd_chunked(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """torch.func.vmap of jacfwd written as vmap(jvp, chunk_size=ceil(in/4)) over the in basis, per sample."""
    x = x.detach()
    in_dim = x.shape[1]
    eye = torch.eye(in_dim, dtype=x.dtype, device=x.device)  # [in, in]

    def one_sample(xi: Tensor) -> Tensor:  # [in] -> [out]
        return model(xi.unsqueeze(0)).squeeze(0)

    def jacobian(xi: Tensor) -> Tensor:  # [in] -> [out, in]
        def column(e: Tensor) -> Tensor:  # [in] -> [out]
            return jvp(one_sample, (xi,), (e,))[1]

        return vmap(column, out_dims=1, chunk_size=quarter_chunk(in_dim))(eye)

    with torch.set_grad_enabled(create_graph):  # torch.func transforms ignore the outer no_grad, not J's graph
        return vmap(jacobian)(x)  # [B, out, in]
