"""Helpers shared by the strategy modules (not a strategy: the leading underscore keeps it out of the registry)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
