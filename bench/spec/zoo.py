"""The model zoo: each preset's factory(in_dim, hidden, out_dim) -> nn.Module, mapping (B, in) to (B, out), and for
an architecture that does not take every size, its fits(in_dim, hidden, out_dim) -> why not ("" when it does).
bench/spec/models.py names them (PRESETS), resolves a user's model and builds a case's model and input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """The seed model: in_dim inputs -> one Tanh layer of width hidden -> out_dim outputs."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim)).eval()


def deep_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """in_dim inputs -> three layers of width hidden (SiLU, GELU, Softplus) -> out_dim outputs."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.GELU(),
        nn.Linear(hidden, hidden), nn.Softplus(),
        nn.Linear(hidden, out_dim),
    ).eval()  # fmt: skip


def mlp_batchnorm(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """in_dim inputs -> Linear to width hidden -> BatchNorm1d -> Tanh -> out_dim outputs. Run in train mode, the batch
    statistics couple the samples: row b of the output depends on every input row."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.Tanh(),
                         nn.Linear(hidden, out_dim)).train()


# ---- beyond the MLP: each factory checks its sizes with the same fits() the planner calls ------------------------


def _require(problem: str) -> None:
    if problem:
        raise ValueError(problem)


PINN_MAX_COORDINATES = 4  # x, y, z, t


def pinn_fits(in_dim: int, hidden: int, out_dim: int) -> str:
    if in_dim > PINN_MAX_COORDINATES:
        return (f"in_dim={in_dim} is not a number of coordinates (a PINN takes 1 to {PINN_MAX_COORDINATES}: "
                "x, y, z, t); use mlp or deep_mlp for wider inputs")
    return ""


def pinn(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A physics-informed network: in_dim coordinates (1 to 4, typically x, y[, z][, t]) -> four Tanh layers of
    width hidden -> out_dim fields (typically 1, e.g. u(x, t)). Smooth everywhere, as PDE residuals need."""
    _require(pinn_fits(in_dim, hidden, out_dim))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, out_dim),
    ).eval()  # fmt: skip


CNN_MIN_SIDE = 4  # two 2x2 poolings leave at least one pixel


def cnn_fits(in_dim: int, hidden: int, out_dim: int) -> str:
    side = math.isqrt(in_dim)
    if side * side != in_dim:
        return f"in_dim={in_dim} is not a square image (use 16, 64, 256, ...: side x side pixels, one channel)"
    if side < CNN_MIN_SIDE:
        return f"in_dim={in_dim} is a {side}x{side} image; two 2x2 poolings need at least 4x4 (in_dim >= 16)"
    return ""


def cnn(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A small image classifier: in_dim = side x side pixels of one channel, flattened (256 = 16x16); hidden =
    channels of both conv layers; out_dim = classes.
    [Conv3x3 -> ReLU -> MaxPool2] x 2 -> flatten -> Linear(hidden * (side // 4)^2, out_dim)."""
    _require(cnn_fits(in_dim, hidden, out_dim))
    side = math.isqrt(in_dim)
    pooled = side // 2 // 2
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),  # [B, in] -> [B, 1, side, side]
        nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),  # [B, hidden * pooled^2]
        nn.Linear(hidden * pooled * pooled, out_dim),
    ).eval()  # fmt: skip


ATTENTION_TOKENS = 8


def attention_fits(in_dim: int, hidden: int, out_dim: int) -> str:
    if in_dim % ATTENTION_TOKENS:
        return (f"in_dim={in_dim} is not {ATTENTION_TOKENS} tokens x width (use a multiple of {ATTENTION_TOKENS}: "
                f"{ATTENTION_TOKENS}, {2 * ATTENTION_TOKENS}, {8 * ATTENTION_TOKENS}, ...)")
    return ""


class Attention(nn.Module):
    """One pre-LayerNorm transformer block over the tokens of each sample, then a head.

    x [B, 8*D] -> 8 tokens of width D (+ learned positions) -> h + SelfAttention(LN(h)) (one head, written with plain
    tensor ops so torch.func transforms and forward-mode AD apply) -> h + MLP(LN(h)) (D -> hidden -> D, GELU) ->
    LN -> flatten -> Linear(8*D, out). Attention mixes tokens of one sample only: samples stay independent.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, tokens: int = ATTENTION_TOKENS):
        super().__init__()
        self.tokens, self.width = tokens, in_dim // tokens
        width = self.width
        self.position = nn.Parameter(0.02 * torch.randn(tokens, width))  # [T, D]
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.norm3 = nn.LayerNorm(width)
        self.head = nn.Linear(tokens * width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], self.tokens, self.width) + self.position  # [B, T, D]
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)  # 3 x [B, T, D]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.width)  # [B, T, T]: tokens of one sample only
        h = h + self.proj(scores.softmax(dim=-1) @ v)  # [B, T, D]
        h = h + self.mlp(self.norm2(h))  # [B, T, D]
        return self.head(self.norm3(h).flatten(1))  # [B, out]


def attention(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A transformer block: in_dim = 8 tokens x width D flattened (in_dim = 64 is 8 tokens of width 8); hidden =
    width of the block's GELU MLP; out_dim = outputs of the linear head on the flattened tokens."""
    _require(attention_fits(in_dim, hidden, out_dim))
    return Attention(in_dim, hidden, out_dim).eval()


FLOW_COUPLINGS = 4


def flow_fits(in_dim: int, hidden: int, out_dim: int) -> str:
    if in_dim != out_dim:
        return f"in_dim={in_dim} != out_dim={out_dim}: a flow is invertible, so in_dim and out_dim must be equal"
    if in_dim < 2:
        return f"in_dim={in_dim}: a coupling layer splits the features in two, so in_dim must be at least 2"
    return ""


class Coupling(nn.Module):
    """RealNVP affine coupling: the first `keep` features pass through and condition a scale and shift of the rest,
    y2 = x2 * exp(tanh(s(x1))) + t(x1); then the features are reversed so the next layer transforms the others."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.keep = dim // 2
        self.net = nn.Sequential(nn.Linear(self.keep, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * (dim - self.keep)))

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.keep], x[:, self.keep :]  # [B, keep], [B, dim - keep]
        log_scale, shift = self.net(x1).chunk(2, dim=1)  # 2 x [B, dim - keep]
        y2 = x2 * torch.exp(torch.tanh(log_scale)) + shift  # tanh bounds the scale to [1/e, e]
        return torch.cat([x1, y2], dim=1).flip(1)  # [B, dim]


def flow(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A normalizing flow (RealNVP): four affine coupling layers on in_dim == out_dim features (>= 2), each with a
    scale/shift net of width hidden (Linear -> Tanh -> Linear -> Tanh -> Linear); J is square and invertible."""
    _require(flow_fits(in_dim, hidden, out_dim))
    return nn.Sequential(*(Coupling(in_dim, hidden) for _ in range(FLOW_COUPLINGS))).eval()


class ResidualBlock(nn.Module):
    """h + Linear(GELU(Linear(LayerNorm(h)))), width hidden throughout."""

    def __init__(self, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)  # [B, H]


RESMLP_BLOCKS = 3


def resmlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A residual MLP: Linear(in_dim, hidden) -> three residual blocks of width hidden (pre-LayerNorm, GELU) ->
    LayerNorm -> Linear(hidden, out_dim). LayerNorm normalizes each sample's features: samples stay independent."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        *(ResidualBlock(hidden) for _ in range(RESMLP_BLOCKS)),
        nn.LayerNorm(hidden),
        nn.Linear(hidden, out_dim),
    ).eval()


def linear_tanh(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """The torch.func tutorial's `predict`: tanh(Linear(in, out)), one layer; hidden is not used."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.Tanh()).eval()
