"""The MLP family the closed forms handle: nn.Sequential of nn.Linear and elementwise activations, with the first and
second derivative of each activation (not a strategy: the leading underscore keeps it out of the registry).

Every other module makes `layers` raise Unsupported, so a closed form never answers wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from strategies import Unsupported

# z -> dσ/dz or d²σ/dz², elementwise
Derivative = Callable[[Tensor], Tensor]

_SQRT_2PI = math.sqrt(2 * math.pi)
_GELU_K = math.sqrt(2 / math.pi)  # the tanh approximation: 0.5 z (1 + tanh(k (z + c z³)))
_GELU_C = 0.044715


def _gelu(module: nn.GELU) -> Derivative:
    if module.approximate == "tanh":
        def d(z: Tensor) -> Tensor:
            t = torch.tanh(_GELU_K * (z + _GELU_C * z**3))
            return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_K * (1 + 3 * _GELU_C * z * z)

        return d
    return lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / _SQRT_2PI


def _gelu2(module: nn.GELU) -> Derivative:
    if module.approximate == "tanh":
        def d2(z: Tensor) -> Tensor:  # u = k (z + c z³), t = tanh(u): (1 - t²) (u' + z (u'' - 2 t u'²) / 2)
            t = torch.tanh(_GELU_K * (z + _GELU_C * z**3))
            du = _GELU_K * (1 + 3 * _GELU_C * z * z)
            d2u = 6 * _GELU_K * _GELU_C * z
            return (1 - t * t) * (du + 0.5 * z * (d2u - 2 * t * du * du))

        return d2
    return lambda z: torch.exp(-0.5 * z * z) / _SQRT_2PI * (2 - z * z)  # φ(z) (2 - z²)


def _silu(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _softplus(module: nn.Softplus) -> Derivative:
    beta, threshold = module.beta, module.threshold
    return lambda z: torch.where(z * beta > threshold, torch.ones_like(z), torch.sigmoid(beta * z))


def _softplus2(module: nn.Softplus) -> Derivative:
    beta, threshold = module.beta, module.threshold  # linear above the threshold: no curvature there

    def d2(z: Tensor) -> Tensor:
        s = torch.sigmoid(beta * z)
        return torch.where(z * beta > threshold, torch.zeros_like(z), beta * s * (1 - s))

    return d2


def _tanh2(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2 * t * (1 - t * t)


def _sigmoid2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


FIRST: dict[type[nn.Module], Callable[[nn.Module], Derivative]] = {
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
# Piecewise-linear activations have no curvature where they are differentiable (autograd says the same at the kinks).
SECOND: dict[type[nn.Module], Callable[[nn.Module], Derivative]] = {
    nn.Identity: lambda m: torch.zeros_like,
    nn.Tanh: lambda m: _tanh2,
    nn.Sigmoid: lambda m: _sigmoid2,
    nn.ReLU: lambda m: torch.zeros_like,
    nn.LeakyReLU: lambda m: torch.zeros_like,
    nn.ELU: lambda m: lambda z: torch.where(z > 0, torch.zeros_like(z), m.alpha * torch.exp(z)),
    nn.SiLU: lambda m: _silu2,
    nn.GELU: _gelu2,
    nn.Softplus: _softplus2,
}


def layers(model: nn.Module, who: str) -> list[nn.Module]:
    """Flatten nested Sequentials; Unsupported (naming `who`) for anything not Linear or a known activation."""
    if type(model) is not nn.Sequential:
        raise Unsupported(f"{who} handles nn.Sequential of Linear and activations, not {type(model).__name__}")
    flat = []
    for module in model:
        if type(module) is nn.Sequential:
            flat.extend(layers(module, who))
        elif type(module) is nn.Dropout and (not module.training or module.p == 0):
            continue  # identity in eval mode
        elif type(module) is nn.Linear or type(module) in FIRST:
            flat.append(module)
        else:
            raise Unsupported(f"{who} has no closed form for {type(module).__name__}")
    return flat


def first(layer: nn.Module) -> Derivative:
    return FIRST[type(layer)](layer)


def second(layer: nn.Module) -> Derivative:
    return SECOND[type(layer)](layer)
