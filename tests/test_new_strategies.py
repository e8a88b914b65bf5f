"""What the tests parametrized over the registry (test_strategies.py) do not cover: the chunk sizes of the chunked
strategies, and why linearize_batched is not differentiable.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import strategies.vmap_jacfwd_chunked as jacfwd_chunked_module
import strategies.vmap_jacrev_chunked as jacrev_chunked_module
from bench.schema import Sizes
from strategies import REGISTRY
from strategies._common import quarter_chunk


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


def build(factory, batch: int = 3, in_dim: int = 3, hidden: int = 4, out_dim: int = 2) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = factory(in_dim, hidden, out_dim).double()
    return model, torch.randn(batch, in_dim, dtype=torch.float64)  # [B, in]


@pytest.mark.filterwarnings("ignore:.*get_attr Node with no underlying reference")
def test_linearize_freezes_parameters():
    """Why linearize_batched declares differentiable=False: with grad enabled, linearize's jvp_fn returns a tensor
    that has a graph, but make_fx traced the parameters in as constants, so none of them gets a gradient. If a torch
    release changes this, linearize_batched can become differentiable."""
    model, x = build(mlp)
    _, jvp_fn = torch.func.linearize(model, x)
    column = jvp_fn(torch.ones_like(x))  # [B, out]
    assert column.requires_grad
    grads = torch.autograd.grad(column.sum(), list(model.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (4, 1), (5, 2), (8, 2), (9, 3), (64, 16), (65, 17)])
def test_quarter_chunk(n, k):
    assert quarter_chunk(n) == k
    assert math.ceil(n / k) <= 4


def test_vmap_jacrev_chunked_asks_jacrev_for_a_quarter_of_out(monkeypatch):
    seen = []
    real = jacrev_chunked_module.jacrev

    def spy(func, *args, **kwargs):
        seen.append(kwargs.get("chunk_size"))
        return real(func, *args, **kwargs)

    monkeypatch.setattr(jacrev_chunked_module, "jacrev", spy)
    model, x = build(mlp, batch=3, in_dim=2, hidden=5, out_dim=9)
    jac = REGISTRY["vmap_jacrev_chunked"](model, x)
    assert seen == [3]  # ceil(9 / 4)
    torch.testing.assert_close(jac, REGISTRY["vmap_jacrev"](model, x), rtol=1e-12, atol=1e-14)


def test_vmap_jacfwd_chunked_runs_four_chunks_of_a_quarter_of_in():
    model, x = build(mlp, batch=3, in_dim=9, hidden=5, out_dim=2)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    jac = REGISTRY["vmap_jacfwd_chunked"](model, x)
    assert len(calls) == math.ceil(9 / quarter_chunk(9))  # one vmapped forward per chunk of the in basis: 3
    calls.clear()
    torch.testing.assert_close(jac, REGISTRY["vmap_jacfwd"](model, x), rtol=1e-12, atol=1e-14)
    assert len(calls) == 1  # the unchunked one vectorizes the whole basis in one forward
    assert jacfwd_chunked_module.quarter_chunk is quarter_chunk


@pytest.mark.parametrize("chunked,full,shape", [
    ("vmap_jacrev_chunked", "vmap_jacrev", (256, 256, 16, 256)),  # (B, H, in, out): wide out
    ("vmap_jacfwd_chunked", "vmap_jacfwd", (256, 256, 256, 16)),  # wide in
])
def test_chunked_memory_estimate_is_below_the_unchunked_one(chunked, full, shape):
    low = REGISTRY[chunked].memory_estimate(Sizes(*shape), torch.float32)
    high = REGISTRY[full].memory_estimate(Sizes(*shape), torch.float32)
    assert low < high / 2
