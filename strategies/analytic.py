"""Closed-form Jacobian of an nn.Sequential of nn.Linear layers and elementwise activations.

J_b = W_L · diag(σ'(z_{L-1,b})) · … · diag(σ'(z_{1,b})) · W_1, computed with batched matrix products in the cheaper
association order: from the input side when in <= out, from the output side otherwise. One forward pass to get the
pre-activations z; no autograd. Cost: O(B·H·(H+in)·min(in, out)) per hidden layer pair. Any other model raises
Unsupported: the reference never answers wrongly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from strategies import _mlp, register


def _forward_factors(layers: list[nn.Module], x: Tensor) -> list[Tensor]:
    """One forward pass; per layer its Jacobian factor: the weight [o, i] or the derivative vector [B, n]."""
    factors, h = [], x  # h: [B, n]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            factors.append(layer.weight)
        else:
            factors.append(_mlp.first(layer)(h))
        h = layer(h)
    return factors


@register(closed_form=True, independent_samples=False, differentiable=True,
          cost="1 fwd + batched matmuls, min(in, out) side")
def analytic(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Closed form: chain of weights and diag(σ'(z)), batched matmuls from the cheaper side."""
    layers = _mlp.layers(model, "analytic")
    with torch.set_grad_enabled(create_graph):  # the closed form is made of differentiable ops
        return _chain(layers, x.detach())


def _chain(layers: list[nn.Module], x: Tensor) -> Tensor:
    factors = _forward_factors(layers, x)  # alternating Linear weights and [B, n] derivative vectors
    is_weight = [isinstance(layer, nn.Linear) for layer in layers]
    batch, in_dim = x.shape
    widths = [f.shape[0] for f, w in zip(factors, is_weight, strict=True) if w]
    out_dim = widths[-1] if widths else in_dim  # activations alone keep the width
    jac = None  # None stands for the identity
    if in_dim <= out_dim:
        for f, w in zip(factors, is_weight, strict=True):  # jac: [B, n, in]
            if w:
                jac = f.expand(batch, *f.shape) if jac is None else torch.matmul(f, jac)
            else:
                jac = torch.diag_embed(f) if jac is None else f.unsqueeze(2) * jac
    else:
        for f, w in zip(reversed(factors), reversed(is_weight), strict=True):  # jac: [B, out, n]
            if w:
                jac = f.expand(batch, *f.shape) if jac is None else torch.matmul(jac, f)
            else:
                jac = torch.diag_embed(f) if jac is None else jac * f.unsqueeze(1)
    if jac is None:
        jac = torch.eye(in_dim, dtype=x.dtype, device=x.device).expand(batch, in_dim, in_dim)
    return jac.contiguous()  # [B, out, in]

