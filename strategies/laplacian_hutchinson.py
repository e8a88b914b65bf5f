"""Hutchinson's stochastic estimate of the Laplacian: the mean of vᵀ H v over Rademacher probes v (an estimator).

Each sample b gets its own SAMPLES probes v (entries ±1, from a generator seeded with SEED: the same probes on
every call and device), and vᵀ H[b, o] v is the second directional derivative along v, a jvp of a jvp (forward over
forward, vmapped over the probes; valid when row b depends on x[b] alone). E[vᵀ H v] = tr H, and for Rademacher probes

    Var(vᵀ H v) = 2 Σ_{i≠j} H_ij²,   so the estimate's standard error is  σ[b, o] = sqrt(2 Σ_{i≠j} H[b, o, i, j]² / S)

with S = SAMPLES (`standard_error` computes it from a Hessian). The estimate is exact when H is diagonal (in = 1, or a
separable model). Its error stays within 6σ at every (b, o) of the suite's tests, and its mean square over many (b, o)
is about σ². Cost O(S·B·H·(H + out)), about 3·S forward passes, whatever in is; memory O(S·B·H). Through
nn.LayerNorm the jvp of a jvp is wrong in torch 2.14 (pytorch/pytorch#196700), so is the estimate's mean there.
"""

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from bench.schema import Sizes
from strategies import register
from strategies._common import nested_ad_model, second_order_bytes

SAMPLES = 8  # probes per sample: the estimate costs about as much as the exact forward Laplacian at in = 8
SEED = 0


def standard_error(hessian: Tensor, samples: int = SAMPLES) -> Tensor:
    """σ of the estimate per (b, o) for the Hessian (B, out, in, in): sqrt(2 Σ_{i≠j} H_ij² / samples)."""
    off_diagonal = hessian.square().sum((2, 3)) - hessian.diagonal(dim1=2, dim2=3).square().sum(2)  # [B, out]
    return (2 * off_diagonal.clamp_min(0) / samples).sqrt()


def probes(x: Tensor, samples: int = SAMPLES) -> Tensor:
    """Rademacher probes (samples, B, in), drawn on the CPU from a seeded generator: the global RNG is untouched."""
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    signs = torch.randint(0, 2, (samples, *x.shape), generator=generator)
    return (2 * signs - 1).to(device=x.device, dtype=x.dtype)


def _memory(sizes: Sizes, dtype: torch.dtype) -> int:
    return second_order_bytes(sizes, dtype, copies=3 * SAMPLES + 1, quantity="laplacian")


@register(quantity="laplacian", estimator=True, independent_samples=True, differentiable=True,
          cost=f"{SAMPLES} Rademacher probes: 1 fwd with {SAMPLES} tangent pairs vmapped", memory_estimate=_memory)
def laplacian_hutchinson(model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """Hutchinson estimate: mean over 8 seeded Rademacher probes v of vᵀHv = jvp(jvp(model, v), v)."""
    x = x.detach()
    forward = nested_ad_model(model, create_graph)

    def quadratic_form(v: Tensor) -> Tensor:  # [B, in] -> [B, out] == vᵀ H v per sample and output
        return jvp(lambda t: jvp(forward, (t,), (v,))[1], (x,), (v,))[1]

    with torch.enable_grad():  # see nested_ad_model; Δ has a graph only with create_graph
        return vmap(quadratic_form)(probes(x)).mean(0)  # [B, out]
