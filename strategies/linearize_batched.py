"""torch.func.linearize(model, x) once, then torch.func.vmap of its jvp_fn over the in basis (broadcast over the batch).

linearize runs the model, then traces its JVP with make_fx into a constant-folded graph; every tangent after that
replays the graph alone. As in jvp_batched, tangent e_i broadcast over the batch gives column i of every sample's
Jacobian (valid when row b depends on x[b] alone). Cost: 2 forwards + a make_fx trace (Python, per call) + in JVPs
vmapped, O(in·B·H·(in+out)); memory O(in·B·H) plus the folded constants. Not differentiable: the trace freezes the
parameters into the graph as constants, so J's graph never reaches them (gradients would silently be None).
Wrong, without an error, on a model that writes into a copy of its input (x = x.clone(); x[:, 0] = 0): in torch
2.14.1 the traced tangent map is the derivative at the input before the write (docs/findings.md); validation marks
it `wrong`.
"""

import warnings

import torch
from torch import Tensor, nn
from torch.func import linearize, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import activations_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return activations_bytes(sizes, dtype, copies=sizes.in_dim + 2)


@register(independent_samples=True, differentiable=False, cost="2 fwd + make_fx trace + in JVPs vmapped",
          memory_estimate=_memory)
def linearize_batched(model: nn.Module, x: Tensor) -> Tensor:
    """torch.func.linearize once, then torch.func.vmap of its jvp_fn over the in one-hot tangents."""
    x = x.detach()
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)  # [in, in]
    with torch.no_grad(), warnings.catch_warnings():
        # const folding warns about the parameters it turns into graph attributes (hidden in linearize's own docs)
        warnings.filterwarnings("ignore", message=".*get_attr Node with no underlying reference")
        _, jvp_fn = linearize(model, x)
        jac = vmap(lambda e: jvp_fn(e.expand_as(x)))(eye)  # [in, B, out]
    return jac.permute(1, 2, 0)  # [B, out, in]
