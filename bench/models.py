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
    return ModelDef(f"{path.stem}.{attr}", factory, train=False, description=f"user model {spec}")


def seed_for(model_name: str, batch: int, hidden: int, in_dim: int, out_dim: int) -> int:
    return SEED + zlib.crc32(f"{model_name}-{batch}-{hidden}-{in_dim}-{out_dim}".encode())


def build(
    model_def: ModelDef, batch: int, hidden: int, in_dim: int, out_dim: int, device: str, dtype: torch.dtype
) -> tuple[nn.Module, Tensor]:
    """The seeded model and input of one case: identical on every run, built on CPU then moved."""
    seed = seed_for(model_def.name, batch, hidden, in_dim, out_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_def.factory(in_dim, hidden, out_dim)
        x = torch.randn(batch, in_dim)  # [B, in]
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {model_def.name}: factory returned {type(model).__name__}, not an nn.Module")
    model = model.to(device=device, dtype=dtype).train(model_def.train)
    return model, x.to(device=device, dtype=dtype)


def check(model_def: ModelDef, hidden: int, in_dim: int, out_dim: int, batch: int = 2) -> None:
    """Fail early (one clear message) when a model does not map (B, in) to (B, out)."""
    try:
        model, x = build(model_def, batch, hidden, in_dim, out_dim, "cpu", torch.float32)
        with torch.no_grad():
            y = model(x)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"model {model_def.name}: running it on input ({batch}, {in_dim}) failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(y, Tensor) or tuple(y.shape) != (batch, out_dim):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ModelError(
            f"model {model_def.name}: maps ({batch}, {in_dim}) to {got}, expected ({batch}, {out_dim}); "
            "the factory must take (in_dim, hidden, out_dim)"
        )
