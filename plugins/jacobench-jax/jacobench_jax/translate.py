"""A torch model as a pure JAX function of (weights, one sample), with the same weights.

What translates: an nn.Sequential (nested ones too) of nn.Linear and the elementwise activations of the model
presets (Tanh, SiLU, GELU, Softplus; also Sigmoid, ReLU, LeakyReLU, ELU, Identity, Dropout in eval mode), each with
the same formula as torch's (GELU's erf or tanh form, Softplus's beta and threshold, ELU's alpha). Anything else is
`Unsupported`, naming the module: a peer must compute the same function as the model it stands beside, or it
measures something else.

`forward(params, x)` takes one sample x: [in] (or a batch [B, in]: the same code broadcasts) and returns [out];
`params` is a tuple of (weight.T [in_l, out_l], bias [out_l] or None) per Linear, JAX arrays of the input's dtype.
The layer structure is static (closed over), the weights are arguments: jax.jit compiles one executable per shape
with the weights as its inputs, not as constants folded into the program.

`Translations` keeps one translation per model, dtype and device, and makes it again when any parameter was
replaced or changed in place (its version), so a trained model is never measured with stale weights.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from jacobench_jax import backend
from strategies import Unsupported

Layer = tuple[str, Any]  # ("linear", index into params) or ("act", fn(jnp array) -> jnp array)
Forward = Callable[[Any, Any], Any]  # forward(params, x [in]) -> [out]


def activation(jax: ModuleType, module: nn.Module) -> Callable[[Any], Any] | None:
    """The JAX form of an elementwise torch activation, None for a module that is not one."""
    jnp = jax.numpy
    if isinstance(module, nn.Tanh):
        return jnp.tanh
    if isinstance(module, nn.SiLU):
        return jax.nn.silu
    if isinstance(module, nn.GELU):
        return lambda h: jax.nn.gelu(h, approximate=module.approximate == "tanh")
    if isinstance(module, nn.Softplus):
        beta, threshold = module.beta, module.threshold
        # torch: log(1 + exp(beta·h)) / beta, and h itself where beta·h > threshold
        return lambda h: jnp.where(h * beta > threshold, h, jax.nn.softplus(h * beta) / beta)
    if isinstance(module, nn.Sigmoid):
        return jax.nn.sigmoid
    if isinstance(module, nn.ReLU):
        return jax.nn.relu
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return lambda h: jnp.where(h > 0, h, h * slope)
    if isinstance(module, nn.ELU):
        alpha = module.alpha
        return lambda h: jax.nn.elu(h, alpha)
    if isinstance(module, (nn.Identity, nn.Dropout)) and not (isinstance(module, nn.Dropout) and module.training):
        return lambda h: h  # Dropout in eval mode is the identity (in train mode it is random: no translation)
    return None


SUPPORTED = ("nn.Sequential of nn.Linear, Tanh, SiLU, GELU, Softplus, Sigmoid, ReLU, LeakyReLU, ELU, Identity and "
             "Dropout in eval mode")


def leaves(model: nn.Module) -> list[nn.Module]:
    """The modules an nn.Sequential (nested ones flattened) runs in order; Unsupported for any other model."""
    if not isinstance(model, nn.Sequential):
        raise Unsupported(f"no JAX translation of {type(model).__name__}: the JAX peers translate an {SUPPORTED}")
    out = []
    for child in model:
        out += leaves(child) if isinstance(child, nn.Sequential) else [child]
    return out


def layers_of(jax: ModuleType, model: nn.Module) -> tuple[list[Layer], list[nn.Linear]]:
    """The static structure of the model and its Linear modules in order."""
    layers, linears = [], []
    for module in leaves(model):
        if isinstance(module, nn.Linear):
            layers.append(("linear", len(linears)))
            linears.append(module)
            continue
        fn = activation(jax, module)
        if fn is None:
            raise Unsupported(f"no JAX translation of {type(module).__name__} in the model: the JAX peers translate "
                              f"an {SUPPORTED}")
        layers.append(("act", fn))
    return layers, linears


def make_forward(layers: list[Layer]) -> Forward:
    """forward(params, x) running the layers on x: [in] -> [out]."""

    def forward(params: Any, x: Any) -> Any:
        h = x
        for kind, what in layers:
            if kind == "act":
                h = what(h)
                continue
            weight_t, bias = params[what]  # [in_l, out_l], [out_l]
            h = h @ weight_t if bias is None else h @ weight_t + bias
        return h

    return forward


def weights(jax: ModuleType, linears: list[nn.Linear], dtype: torch.dtype, device: Any) -> tuple:
    """The Linear layers' weights as JAX arrays of the input's dtype: (weight.T, bias or None) per layer."""
    return tuple((backend.to_jax(jax, m.weight.detach().to(dtype).t(), device),
                  None if m.bias is None else backend.to_jax(jax, m.bias.detach().to(dtype), device))
                 for m in linears)


@dataclass
class Translation:
    """One model translated for one dtype and device, and the programs compiled from it (jax.jit, per strategy)."""

    forward: Forward
    params: tuple  # JAX arrays, see `weights`
    modules: tuple[nn.Module, ...]  # the modules the model ran when translated, in order
    signature: tuple  # what the params were made from: see `signature`
    programs: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def stale(self, model: nn.Module) -> bool:
        """The model runs other modules now, or some weight was replaced or changed in place."""
        return tuple(leaves(model)) != self.modules or signature(self.modules) != self.signature


def signature(modules: tuple[nn.Module, ...]) -> tuple:
    """Identity, storage and version of every parameter: any change makes the translation stale."""
    return tuple((id(t), t.data_ptr(), t._version) for m in modules for t in m._parameters.values() if t is not None)


def translate(model: nn.Module, x: Tensor, device: Any) -> Translation:
    """The model as a JAX function and its weights in x's dtype on the JAX device."""
    jax = backend.start().jax
    layers, linears = layers_of(jax, model)
    modules = tuple(leaves(model))
    return Translation(make_forward(layers), weights(jax, linears, x.dtype, device), modules, signature(modules))


class Translations:
    """One translation per model (held weakly), dtype and device; made again when the model changed."""

    def __init__(self) -> None:
        self._by_model: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Translation]] = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, x: Tensor, device: Any) -> Translation:
        mine = self._by_model.setdefault(model, {})
        key = (x.dtype, str(device))
        found = mine.get(key)
        if found is None or found.stale(model):
            found = mine[key] = translate(model, x, device)
        return found
