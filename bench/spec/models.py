"""Model presets (data, not code paths) and user models given as ``path/to/file.py:factory``.

Every preset has the signature ``factory(in_dim, hidden, out_dim) -> nn.Module`` mapping (B, in) to (B, out); a
user's factory may also take no arguments, for a model of fixed sizes (``fixed``: bench/spec/own_model.py finds its
sizes; its cases record hidden = 0, not an axis).
Models and inputs are seeded from the case, so the same case gives the same tensors on every run and machine.
The model is measured in the train/eval mode its factory returns it in (BatchNorm in training mode couples the
samples; Dropout in training mode is random, and no reference can validate it). A preset whose architecture does
not fit every size says so in ``fits``: the run is refused at planning time, with the reason, before anything is
built or measured. Output row b depends on input row b alone unless the preset ``couples_samples``.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.schema import Sizes

# factory(in_dim, hidden, out_dim) -> model
Factory = Callable[[int, int, int], nn.Module]
# fits(in_dim, hidden, out_dim) -> why the architecture cannot take these sizes ("" when it can)
Fits = Callable[[int, int, int], str]

SEED = 0  # combined with the case's shape: recorded in env.json


class ModelError(BenchError):
    """A model spec that cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class ModelDef:
    name: str
    factory: Factory
    description: str
    spec: str = ""  # how to resolve it again: the preset name, or /absolute/path/file.py:factory
    fits: Fits | None = None  # None: every size fits (user models: the factory itself is the check)
    couples_samples: bool = False  # output row b depends on other input rows too (BatchNorm in training mode)
    fixed: bool = False  # factory() takes no sizes: the model's own in and out, hidden recorded as 0

    def __post_init__(self) -> None:
        if not self.spec:
            object.__setattr__(self, "spec", self.name)

    def problem(self, sizes: Sizes) -> str:
        """Why these sizes do not fit the architecture, "" when they do."""
        return self.fits(sizes.in_dim, sizes.hidden, sizes.out_dim) if self.fits else ""


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """The seed model: in_dim inputs -> one Tanh layer of width hidden -> out_dim outputs."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim)).eval()


def _deep_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """in_dim inputs -> three layers of width hidden (SiLU, GELU, Softplus) -> out_dim outputs."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.GELU(),
        nn.Linear(hidden, hidden), nn.Softplus(),
        nn.Linear(hidden, out_dim),
    ).eval()  # fmt: skip


def _mlp_batchnorm(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """in_dim inputs -> Linear to width hidden -> BatchNorm1d -> Tanh -> out_dim outputs. Run in train mode, the batch
    statistics couple the samples: row b of the output depends on every input row."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.Tanh(),
                         nn.Linear(hidden, out_dim)).train()


# ---- beyond the MLP: each factory checks its sizes with the same fits() the planner calls ------------------------


def _require(problem: str) -> None:
    if problem:
        raise ValueError(problem)


PINN_MAX_COORDINATES = 4  # x, y, z, t


def _pinn_fits(in_dim: int, hidden: int, out_dim: int) -> str:
    if in_dim > PINN_MAX_COORDINATES:
        return (f"in_dim={in_dim} is not a number of coordinates (a PINN takes 1 to {PINN_MAX_COORDINATES}: "
                "x, y, z, t); use mlp or deep_mlp for wider inputs")
    return ""


def _pinn(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A physics-informed network: in_dim coordinates (1 to 4, typically x, y[, z][, t]) -> four Tanh layers of
    width hidden -> out_dim fields (typically 1, e.g. u(x, t)). Smooth everywhere, as PDE residuals need."""
    _require(_pinn_fits(in_dim, hidden, out_dim))
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, out_dim),
    ).eval()  # fmt: skip


CNN_MIN_SIDE = 4  # two 2x2 poolings leave at least one pixel


def _cnn_fits(in_dim: int, hidden: int, out_dim: int) -> str:
    side = math.isqrt(in_dim)
    if side * side != in_dim:
        return f"in_dim={in_dim} is not a square image (use 16, 64, 256, ...: side x side pixels, one channel)"
    if side < CNN_MIN_SIDE:
        return f"in_dim={in_dim} is a {side}x{side} image; two 2x2 poolings need at least 4x4 (in_dim >= 16)"
    return ""


def _cnn(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A small image classifier: in_dim = side x side pixels of one channel, flattened (256 = 16x16); hidden =
    channels of both conv layers; out_dim = classes.
    [Conv3x3 -> ReLU -> MaxPool2] x 2 -> flatten -> Linear(hidden * (side // 4)^2, out_dim)."""
    _require(_cnn_fits(in_dim, hidden, out_dim))
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


def _attention_fits(in_dim: int, hidden: int, out_dim: int) -> str:
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


def _attention(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A transformer block: in_dim = 8 tokens x width D flattened (in_dim = 64 is 8 tokens of width 8); hidden =
    width of the block's GELU MLP; out_dim = outputs of the linear head on the flattened tokens."""
    _require(_attention_fits(in_dim, hidden, out_dim))
    return Attention(in_dim, hidden, out_dim).eval()


FLOW_COUPLINGS = 4


def _flow_fits(in_dim: int, hidden: int, out_dim: int) -> str:
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


def _flow(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A normalizing flow (RealNVP): four affine coupling layers on in_dim == out_dim features (>= 2), each with a
    scale/shift net of width hidden (Linear -> Tanh -> Linear -> Tanh -> Linear); J is square and invertible."""
    _require(_flow_fits(in_dim, hidden, out_dim))
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


def _resmlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A residual MLP: Linear(in_dim, hidden) -> three residual blocks of width hidden (pre-LayerNorm, GELU) ->
    LayerNorm -> Linear(hidden, out_dim). LayerNorm normalizes each sample's features: samples stay independent."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        *(ResidualBlock(hidden) for _ in range(RESMLP_BLOCKS)),
        nn.LayerNorm(hidden),
        nn.Linear(hidden, out_dim),
    ).eval()


def _linear_tanh(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """The torch.func tutorial's `predict`: tanh(Linear(in, out)), one layer; hidden is not used."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.Tanh()).eval()


PRESETS: dict[str, ModelDef] = {
    m.name: m
    for m in [
        ModelDef("mlp", _mlp, "the seed model: Linear(in, H) -> Tanh -> Linear(H, out)"),
        ModelDef("deep_mlp", _deep_mlp, "4 Linear layers of width H with SiLU, GELU, Softplus"),
        ModelDef("mlp_batchnorm", _mlp_batchnorm, "Linear -> BatchNorm1d (train mode) -> Tanh -> Linear",
                 couples_samples=True),
        ModelDef("pinn", _pinn, "PINN: in coordinates (1-4) -> 4 Tanh layers of width H -> out fields",
                 fits=_pinn_fits),
        ModelDef("cnn", _cnn, "in = side x side image, 1 channel: [Conv3x3(H ch) -> ReLU -> MaxPool2] x 2 "
                 "-> Linear(out classes)", fits=_cnn_fits),
        ModelDef("attention", _attention, "in = 8 tokens x width: pre-LN self-attention + GELU MLP of width "
                 "H (residual) -> LayerNorm -> Linear(out)", fits=_attention_fits),
        ModelDef("flow", _flow, "RealNVP: 4 affine coupling layers, scale/shift nets of width H; in == out",
                 fits=_flow_fits),
        ModelDef("resmlp", _resmlp, "Linear(in, H) -> 3 residual blocks (LayerNorm, GELU) -> LayerNorm -> "
                 "Linear(out)"),
        ModelDef("linear_tanh", _linear_tanh, "tanh(Linear(in, out)), the torch.func tutorial's predict; H unused"),
    ]
}


def resolve(spec: str) -> ModelDef:
    """A preset name or ``path/to/file.py:factory``."""
    if spec in PRESETS:
        return PRESETS[spec]
    if ":" not in spec:
        raise ModelError(f"unknown model {spec!r}: choose one of {', '.join(PRESETS)} or give path/to/file.py:factory")
    file, _, attr = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise ModelError(f"MODEL={spec}: file {file} not found")
    module_name = f"jacobench_user_model_{zlib.crc32(str(path.resolve()).encode())}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelError(f"MODEL={spec}: importing {file} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"MODEL={spec}: {file} has no function {attr!r} (expected factory(in_dim, hidden, out_dim), "
                         "or factory() for a model of fixed sizes)")
    source = f"{path.resolve()}:{attr}"
    return ModelDef(f"{path.stem}.{attr}", factory, description=f"user model {source}", spec=source,
                    fixed=_takes_no_sizes(factory, spec))


def _takes_no_sizes(factory: Callable, spec: str) -> bool:
    """True for factory(), False for factory(in_dim, hidden, out_dim); a ModelError for any other signature."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False  # a builtin or a callable without a signature: called with the three sizes, as before
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    takes_three = len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
    if not required:
        return not takes_three
    if len(required) <= 3 and takes_three:
        return False
    raise ModelError(f"MODEL={spec}: the factory takes ({', '.join(p.name for p in required)}); give it the three "
                     "sizes factory(in_dim, hidden, out_dim), or no argument for a model of fixed sizes")


def seed_for(model_name: str, sizes: Sizes) -> int:
    return SEED + zlib.crc32(f"{model_name}-{'-'.join(map(str, sizes))}".encode())


def instantiate(model_def: ModelDef, sizes: Sizes) -> nn.Module:
    """Call the factory; a ModelError that names the call when it raises or returns something else."""
    given = "" if model_def.fixed else f"in_dim={sizes.in_dim}, hidden={sizes.hidden}, out_dim={sizes.out_dim}"
    call = f"model {model_def.name}: factory({given})"
    try:
        model = model_def.factory() if model_def.fixed else model_def.factory(sizes.in_dim, sizes.hidden, sizes.out_dim)
    except Exception as exc:
        raise ModelError(f"{call} raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{call} returned {type(model).__name__}, not an nn.Module")
    return model


def build(model_def: ModelDef, sizes: Sizes, device: str, dtype: torch.dtype) -> tuple[nn.Module, Tensor]:
    """The seeded model and input of one case: identical on every run, built on CPU then moved, in the train/eval
    mode the factory returned it in."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(model_def.name, sizes))
        model = instantiate(model_def, sizes)
        x = torch.randn(sizes.batch, sizes.in_dim)  # [B, in]
    return model.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)


def output_problem(y: object, batch: int, in_dim: int, out_dim: int) -> str:
    """Why a model output is not the (batch, out_dim) Tensor expected ("" when it is)."""
    if not isinstance(y, Tensor):
        return f"model(x) returned a {type(y).__name__}, expected a Tensor ({batch}, out)"
    if tuple(y.shape) == (batch, out_dim):
        return ""
    got = f"model(x) maps ({batch}, {in_dim}) to {tuple(y.shape)}, expected ({batch}, {out_dim})"
    if y.dim() == 2 and y.shape[0] == batch:
        return got + "; the factory must take (in_dim, hidden, out_dim) in this order"
    if y.dim() < 2:
        return got + "; does the model squeeze the output?"
    return got


def run_problem(model: nn.Module, x: Tensor, out_dim: int) -> str:
    """Why model(x) does not give a (B, out_dim) Tensor, "" when it does."""
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:
        return f"model(x) on input {tuple(x.shape)} raised {type(exc).__name__}: {first_line(exc)}"
    return output_problem(y, x.shape[0], x.shape[1], out_dim)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
