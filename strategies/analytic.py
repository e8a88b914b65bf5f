"""Closed-form Jacobian of an nn.Sequential of nn.Linear layers and elementwise activations.

J_b = W_L · diag(σ'(z_{L-1,b})) · … · diag(σ'(z_{1,b})) · W_1, computed with batched matrix products in the cheaper
association order: from the input side when in <= out, from the output side otherwise. One forward pass to get the
pre-activations z; no autograd. Cost: O(B·H·(H+in)·min(in, out)) per hidden layer pair. Any other model raises
Unsupported: the reference never answers wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from strategies import Unsupported, register

# z -> dσ/dz, elementwise
Derivative = Callable[[Tensor], Tensor]


def _gelu(module: nn.GELU) -> Derivative:
    if module.approximate == "tanh":
        k = math.sqrt(2 / math.pi)

        def d(z: Tensor) -> Tensor:
            t = torch.tanh(k * (z + 0.044715 * z**3))
            return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z)

        return d
    return lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _silu(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _softplus(module: nn.Softplus) -> Derivative:
    beta, threshold = module.beta, module.threshold
    return lambda z: torch.where(z * beta > threshold, torch.ones_like(z), torch.sigmoid(beta * z))


_DERIVATIVES: dict[type[nn.Module], Callable[[nn.Module], Derivative]] = {
    nn.Identity: lambda m: torch.ones_like,
    nn.Tanh: lambda m: lambda z: 1 - torch.tanh(z) ** 2,
    nn.Sigmoid: lambda m: lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)),
    nn.ReLU: lambda m: lambda z: (z > 0).to(z.dtype),
    nn.LeakyReLU: lambda m: lambda z: torch.where(z > 0, 1.0, m.negative_slope).to(z.dtype),
    nn.ELU: lambda m: lambda z: torch.where(z > 0, torch.ones_like(z), m.alpha * torch.exp(z)),
    nn.SiLU: lambda m: _silu,
    nn.GELU: _gelu,
    nn.Softplus: _softplus,
}


def _layers(model: nn.Module) -> list[nn.Module]:
    """Flatten nested Sequentials; Unsupported for anything that is not Linear or a known elementwise activation."""
    if type(model) is not nn.Sequential:
        raise Unsupported(f"analytic handles nn.Sequential of Linear and activations, not {type(model).__name__}")
    layers = []
    for module in model:
        if type(module) is nn.Sequential:
            layers.extend(_layers(module))
        elif type(module) is nn.Dropout and (not module.training or module.p == 0):
            continue  # identity in eval mode
        elif type(module) is nn.Linear or type(module) in _DERIVATIVES:
            layers.append(module)
        else:
            raise Unsupported(f"analytic has no closed form for {type(module).__name__}")
    return layers


def _forward_factors(layers: list[nn.Module], x: Tensor) -> list[Tensor]:
    """One forward pass; per layer its Jacobian factor: the weight [o, i] or the derivative vector [B, n]."""
    factors, h = [], x  # h: [B, n]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            factors.append(layer.weight)
        else:
            factors.append(_DERIVATIVES[type(layer)](layer)(h))
        h = layer(h)
    return factors


@register(independent_samples=False, differentiable=True, cost="1 fwd + batched matmuls, min(in, out) side")
def analytic(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Closed form: chain of weights and diag(σ'(z)), batched matmuls from the cheaper side."""
    layers = _layers(model)
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

