"""Helpers shared by the strategy modules (not a strategy: the leading underscore keeps it out of the registry)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.schema import Sizes


def leaf(x: Tensor) -> Tensor:
    """A fresh leaf that requires grad and shares x's storage: x itself is never modified."""
    return x.detach().requires_grad_(True)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def activations_bytes(sizes: Sizes, dtype: torch.dtype, copies: int = 1) -> int:
    """Bytes of `copies` forward passes' saved activations plus the (B, out, in) result."""
    b, h, i, o = sizes
    per_pass = b * (i + 3 * h + o)  # [B, in] input, [B, H] pre/post activation + grad, [B, out]
    return itemsize(dtype) * (copies * per_pass + b * o * i)


def quarter_chunk(n: int) -> int:
    """Chunk size for the chunked strategies: ceil(n / 4), so the vectorized basis is about a quarter of n wide."""
    return max(1, math.ceil(n / 4))


def second_order_bytes(sizes: Sizes, dtype: torch.dtype, copies: int, quantity: str) -> int:
    """Bytes of `copies` forward passes' saved activations plus the result: the Hessian (B, out, in, in), or the
    Laplacian (B, out)."""
    b, h, i, o = sizes
    per_pass = b * (i + 3 * h + o)  # as in activations_bytes
    result = b * o * i * i if quantity == "hessian" else b * o
    return itemsize(dtype) * (copies * per_pass + result)


def nested_ad_model(model: nn.Module, create_graph: bool) -> Callable[[Tensor], Tensor]:
    """The model's forward for nested torch.func transforms with a forward-mode level (jvp of jvp, jacfwd of jacrev),
    which must run with grad mode on: under no_grad some ops' derivatives have no forward-mode derivative (torch 2.14:
    "Trying to use forward AD with aten::silu_backward that does not support it", for SiLU), while with grad mode on
    torch differentiates their decomposition. Without create_graph the parameters are detached
    (torch.func.functional_call), so grad mode records no graph to them and the result carries none."""
    if create_graph:
        return model
    params = {name: p.detach() for name, p in model.named_parameters()}
    return lambda t: torch.func.functional_call(model, params, (t,))
