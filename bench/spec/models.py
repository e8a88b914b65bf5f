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
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.schema import Sizes
from bench.spec import zoo

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


PRESETS: dict[str, ModelDef] = {
    m.name: m
    for m in [
        ModelDef("mlp", zoo.mlp, "the seed model: Linear(in, H) -> Tanh -> Linear(H, out)"),
        ModelDef("deep_mlp", zoo.deep_mlp, "4 Linear layers of width H with SiLU, GELU, Softplus"),
        ModelDef("mlp_batchnorm", zoo.mlp_batchnorm, "Linear -> BatchNorm1d (train mode) -> Tanh -> Linear",
                 couples_samples=True),
        ModelDef("pinn", zoo.pinn, "PINN: in coordinates (1-4) -> 4 Tanh layers of width H -> out fields",
                 fits=zoo.pinn_fits),
        ModelDef("cnn", zoo.cnn, "in = side x side image, 1 channel: [Conv3x3(H ch) -> ReLU -> MaxPool2] x 2 "
                 "-> Linear(out classes)", fits=zoo.cnn_fits),
        ModelDef("attention", zoo.attention, "in = 8 tokens x width: pre-LN self-attention + GELU MLP of width "
                 "H (residual) -> LayerNorm -> Linear(out)", fits=zoo.attention_fits),
        ModelDef("flow", zoo.flow, "RealNVP: 4 affine coupling layers, scale/shift nets of width H; in == out",
                 fits=zoo.flow_fits),
        ModelDef("resmlp", zoo.resmlp, "Linear(in, H) -> 3 residual blocks (LayerNorm, GELU) -> LayerNorm -> "
                 "Linear(out)"),
        ModelDef("linear_tanh", zoo.linear_tanh, "tanh(Linear(in, out)), the torch.func tutorial's predict; H unused"),
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
    folder = str(path.resolve().parent)  # its sibling modules import as they do when the file runs as a script
    if folder not in sys.path:  # after the suite's own packages, so that a user's bench.py shadows none of them
        sys.path.append(folder)
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


def instantiate(model_def: ModelDef, sizes: Sizes, keep_compiled: bool = False, materialize: bool = True) -> nn.Module:
    """Call the factory; a ModelError that names the call when it raises or returns something else. A
    torch.compile'd module is measured as its eager module (`eager_module`) unless `keep_compiled`; lazy layers
    (nn.LazyLinear ...) get their sizes from `sizes.in_dim` (`materialized`) unless not `materialize` (the input
    width is not known yet)."""
    given = "" if model_def.fixed else f"in_dim={sizes.in_dim}, hidden={sizes.hidden}, out_dim={sizes.out_dim}"
    call = f"model {model_def.name}: factory({given})"
    try:
        model = model_def.factory() if model_def.fixed else model_def.factory(sizes.in_dim, sizes.hidden, sizes.out_dim)
    except Exception as exc:
        raise ModelError(f"{call} raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{call} returned {type(model).__name__}, not an nn.Module")
    if materialize:
        materialized(eager_module(model), sizes.in_dim, model_def.name)
    return model if keep_compiled else eager_module(model)


def lazy_layers(model: nn.Module) -> list[str]:
    """The names of the layers whose parameters wait for a first call to get their sizes (nn.LazyLinear ...)."""
    return [name or "model" for name, module in model.named_modules()
            if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params()]


def materialized(model: nn.Module, in_dim: int, name: str) -> nn.Module:
    """The model with its lazy layers sized by one call on a (2, in_dim) batch of zeros, in eval mode (a
    BatchNorm's running statistics stay as built) and without autograd; each module's train/eval mode is put back.
    Left lazy, the run stopped with a traceback while reading the model's sizes (an uninitialized parameter), and
    a first timed or validated call would have paid for the initialization."""
    if not lazy_layers(model):
        return model
    dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, in_dim, dtype=dtype))
    except Exception as exc:
        raise ModelError(f"model {name}: sizing its lazy layers ({', '.join(lazy_layers(model))}) by model(x) on "
                         f"input (2, {in_dim}) raised {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        for module, training in modes.items():
            module.training = training
    return model


def is_compiled_module(model: nn.Module) -> bool:
    """A module the factory wrapped in torch.compile (torch._dynamo's OptimizedModule)."""
    return type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module)


def eager_module(model: nn.Module) -> nn.Module:
    """The module a torch.compile'd one wraps (the model itself otherwise). Compiled on its own, the model failed
    to compile in the run's forked worker processes (inductor: "Unable to handle autograd's threading in combination
    with fork-based multiprocessing", every case an error); torch.compile is measured by the *_compiled strategies,
    which compile the whole Jacobian call, the model inlined."""
    return model._orig_mod if is_compiled_module(model) else model


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
