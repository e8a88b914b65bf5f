"""Closed-form forward Laplacian of an nn.Sequential of nn.Linear layers and elementwise activations.

One forward pass carries, per sample, the value h, its Jacobian J = dh/dx (B, n, in) and its Laplacian L (B, n):

    Linear   h' = W h + b,   J' = W J,        L' = W L
    σ        h' = σ(h),      J' = σ'(h) ⊙ J,  L' = σ'(h) ⊙ L + σ''(h) ⊙ Σ_i J[:, i]²

(the forward Laplacian of folx, Li et al. 2023), no autograd. Cost per layer O(B·H·(H·in + in)), about in forward
passes; memory O(B·H·in). Any other model raises Unsupported: the closed form never answers wrongly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.schema import Sizes
from strategies import _mlp, register
from strategies._common import second_order_bytes


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=sizes.in_dim + 2, quantity="laplacian")


@register(quantity="laplacian", closed_form=True, independent_samples=False, differentiable=True,
          cost="1 fwd carrying J (in columns) and Δ", memory_estimate=_memory)
def laplacian_analytic(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Closed form: the forward Laplacian, value, Jacobian and Laplacian pushed through the layers together."""
    layers = _mlp.layers(model, "laplacian_analytic")
    with torch.set_grad_enabled(create_graph):  # the closed form is made of differentiable ops
        return _forward_laplacian(layers, x.detach())


def _forward_laplacian(layers: list[nn.Module], x: Tensor) -> Tensor:
    batch, in_dim = x.shape
    h = x  # [B, n]
    jac = torch.eye(in_dim, dtype=x.dtype, device=x.device).expand(batch, in_dim, in_dim)  # [B, n, in]
    lap = torch.zeros_like(x)  # [B, n]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            jac = torch.matmul(layer.weight, jac)  # [B, n_out, in]
            lap = lap @ layer.weight.T  # [B, n_out]: no bias, the Laplacian of a constant is 0
        else:
            d1 = _mlp.first(layer)(h)  # [B, n]
            lap = d1 * lap + _mlp.second(layer)(h) * jac.square().sum(2)
            jac = d1.unsqueeze(2) * jac
        h = layer(h)
    return lap  # [B, out]
