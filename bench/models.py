"""Model presets (data, not code paths) and user models given as ``path/to/file.py:factory``.

Every factory has the signature ``factory(in_dim, hidden, out_dim) -> nn.Module`` mapping (B, in) to (B, out).
Models and inputs are seeded from the case, so the same case gives the same tensors on every run and machine.
"""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bench.errors import BenchError

# factory(in_dim, hidden, out_dim) -> model
Factory = Callable[[int, int, int], nn.Module]

SEED = 0  # combined with the case's shape: recorded in env.json


class ModelError(BenchError):
    """A model spec that cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class ModelDef:
    name: str
    factory: Factory
    train: bool  # train mode (BatchNorm uses batch statistics: samples are coupled)
    description: str
    spec: str = ""  # how to resolve it again: the preset name, or /absolute/path/file.py:factory

    def __post_init__(self) -> None:
        if not self.spec:
            object.__setattr__(self, "spec", self.name)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


def _deep_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.GELU(),
        nn.Linear(hidden, hidden), nn.Softplus(),
        nn.Linear(hidden, out_dim),
    )  # fmt: skip


def _mlp_batchnorm(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


PRESETS: dict[str, ModelDef] = {
    m.name: m
    for m in [
        ModelDef("mlp", _mlp, False, "the seed model: Linear(in, H) -> Tanh -> Linear(H, out)"),
        ModelDef("deep_mlp", _deep_mlp, False, "4 Linear layers of width H with SiLU, GELU, Softplus"),
        ModelDef("mlp_batchnorm", _mlp_batchnorm, True, "Linear -> BatchNorm1d (train mode) -> Tanh -> Linear"),
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
        raise ModelError(f"MODEL={spec}: {file} has no function {attr!r} (expected factory(in_dim, hidden, out_dim))")
    source = f"{path.resolve()}:{attr}"
    return ModelDef(f"{path.stem}.{attr}", factory, train=False, description=f"user model {source}", spec=source)


def seed_for(model_name: str, batch: int, hidden: int, in_dim: int, out_dim: int) -> int:
    return SEED + zlib.crc32(f"{model_name}-{batch}-{hidden}-{in_dim}-{out_dim}".encode())


def instantiate(model_def: ModelDef, in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """Call the factory; a ModelError that names the call when it raises or returns something else."""
    call = f"model {model_def.name}: factory(in_dim={in_dim}, hidden={hidden}, out_dim={out_dim})"
    try:
        model = model_def.factory(in_dim, hidden, out_dim)
    except Exception as exc:
        raise ModelError(f"{call} raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{call} returned {type(model).__name__}, not an nn.Module")
    return model


def build(
    model_def: ModelDef, batch: int, hidden: int, in_dim: int, out_dim: int, device: str, dtype: torch.dtype
) -> tuple[nn.Module, Tensor]:
    """The seeded model and input of one case: identical on every run, built on CPU then moved."""
    seed = seed_for(model_def.name, batch, hidden, in_dim, out_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(model_def, in_dim, hidden, out_dim)
        x = torch.randn(batch, in_dim)  # [B, in]
    model = model.to(device=device, dtype=dtype).train(model_def.train)
    return model, x.to(device=device, dtype=dtype)


def native_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of the model's parameters and buffers as the factory built it (None: none or mixed)."""
    found = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return found.pop() if len(found) == 1 else None


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


@dataclass(frozen=True)
class Probe:
    """What checking a model found that does not stop the run."""

    dtype: torch.dtype | None  # as the factory built it
    one_sample: str  # why it fails on a one-sample batch ("" if it works)


def check(model_def: ModelDef, hidden: int, in_dim: int, out_dim: int, batch: int = 2) -> Probe:
    """Fail early (one clear message) when a model does not map (B, in) to (B, out); probe a one-sample batch too,
    which per-sample strategies (vmap over single samples) and B=1 cases feed it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(model_def.name, batch, hidden, in_dim, out_dim))
        model = instantiate(model_def, in_dim, hidden, out_dim)
    dtype = native_dtype(model)
    model = model.float().train(model_def.train)
    problem = run_problem(model, torch.randn(batch, in_dim), out_dim)
    if problem:
        raise ModelError(f"model {model_def.name}: {problem}")
    return Probe(dtype=dtype, one_sample=run_problem(model, torch.randn(1, in_dim), out_dim))


def run_problem(model: nn.Module, x: Tensor, out_dim: int) -> str:
    """Why model(x) does not give a (B, out_dim) Tensor, "" when it does."""
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:
        return f"model(x) on input {tuple(x.shape)} raised {type(exc).__name__}: {_first_line(exc)}"
    return output_problem(y, x.shape[0], x.shape[1], out_dim)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
