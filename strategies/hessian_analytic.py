"""Closed-form per-sample Hessian of an nn.Sequential of nn.Linear layers and elementwise activations.

Affine layers have no curvature, so the whole Hessian comes from the activations: with z_k the input of activation
k, J_k = dz_k/dx (B, n_k, in) and a_k = dy/dσ(z_k) (B, out, n_k) the derivative of the outputs with respect to that
activation's output,

    H[b, o] = Σ_k J_k[b]ᵀ · diag(a_k[b, o] ⊙ σ_k''(z_k[b])) · J_k[b].

One forward pass carries J (B, n, in); one backward sweep carries a (B, out, n); no autograd. Cost per activation
O(B·H·(H·in + H·out + out·in²)); memory: every J_k, O(L·B·H·in), and the (B, out, in, in) result. Any other model
raises Unsupported: the closed form never answers wrongly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import _mlp, register
from strategies._common import itemsize, second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    b, h, i, o = sizes
    return second_order_bytes(sizes, dtype, copies=1, quantity="hessian") + itemsize(dtype) * b * h * i * (2 * o + 4)


@register(quantity="hessian", closed_form=True, independent_samples=False, differentiable=True,
          cost="1 fwd carrying J + 1 backward sweep + batched matmuls per activation", memory_estimate=_memory)
def hessian_analytic(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Closed form: Σ over activations of J_kᵀ diag(dy/dσ ⊙ σ''(z_k)) J_k, with batched matmuls."""
    layers = _mlp.layers(model, "hessian_analytic")
    with torch.set_grad_enabled(create_graph):  # the closed form is made of differentiable ops
        return _hessian(layers, x.detach())


def _hessian(layers: list[nn.Module], x: Tensor) -> Tensor:
    batch, in_dim = x.shape
    h, jac = x, torch.eye(in_dim, dtype=x.dtype, device=x.device).expand(batch, in_dim, in_dim)  # [B, n, in]
    saved = []  # per activation: (layer, z [B, n], J of z [B, n, in])
    for layer in layers:
        if isinstance(layer, nn.Linear):
            jac = torch.matmul(layer.weight, jac)  # [B, n_out, in]
        else:
            saved.append((layer, h, jac))
            jac = _mlp.first(layer)(h).unsqueeze(2) * jac
        h = layer(h)
    out_dim = h.shape[1]
    adjoint = torch.eye(out_dim, dtype=x.dtype, device=x.device).expand(batch, out_dim, out_dim)  # [B, out, n]
    hess = torch.zeros(batch, out_dim, in_dim, in_dim, dtype=x.dtype, device=x.device)  # [B, out, in, in]
    for layer in reversed(layers):
        if isinstance(layer, nn.Linear):
            adjoint = torch.matmul(adjoint, layer.weight)  # [B, out, n_in]
            continue
        _, z, jz = saved.pop()
        curvature = adjoint * _mlp.second(layer)(z).unsqueeze(1)  # [B, out, n]
        weighted = curvature.unsqueeze(3) * jz.unsqueeze(1)  # [B, out, n, in]
        hess = hess + torch.matmul(jz.transpose(1, 2).unsqueeze(1), weighted)  # [B, 1, in, n] @ -> [B, out, in, in]
        adjoint = adjoint * _mlp.first(layer)(z).unsqueeze(1)
    return hess
