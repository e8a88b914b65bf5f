"""A model checked before a run (`check`): that it maps (B, in) to (B, out), that autograd can differentiate it with
respect to x, the dtype and device it is built in; and the sizes of a model that fixes them.

A factory that takes no arguments (bench/spec/models.py: ``fixed``) builds a model of fixed sizes: its input width
is IN_DIM= when given, else the width its first layer declares (``nn.Linear.in_features``, checked by calling the
model), else the run asks for IN_DIM=; its output width is what ``model(x)`` returns. `hidden` is not an axis of such
a model: its cases record hidden = 0 (FIXED_HIDDEN), and ids and reports leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.schema import FIXED_HIDDEN, Sizes
from bench.spec import models, precision

PROBE_BATCH = 2


def native_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating dtype of the model's parameters and buffers as the factory built it (None: none or mixed)."""
    found = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class Probe:
    """What checking a model found that does not stop the run by itself."""

    dtype: torch.dtype | None  # as the factory built it
    one_sample: str  # why it fails on a one-sample batch ("" if it works)
    training: bool  # nn.Module.training as the factory returned it: the mode it is measured in
    graph: str  # why autograd cannot differentiate model(x) with respect to x ("" when it can)
    built_on: tuple[str, ...]  # the devices of its parameters and buffers as built
    loose: tuple[str, ...]  # tensors kept as plain attributes: .to() neither moves nor casts them
    scripted: bool = False  # a TorchScript module: its speed depends on its first call
    compiled: bool = False  # a torch.compile'd module: measured as its eager module (models.eager_module)
    forward_error: float = 0.0  # how far its float32 output is from its float64 copy's (reference.forward_error)
    trainable: bool = True  # some parameter requires grad: train mode has something to train


def check(model_def: models.ModelDef, sizes: Sizes) -> Probe:
    """Fail early (one clear message) when a model does not map (B, in) to (B, out) at these sizes (B=2 is used);
    probe a one-sample batch too, which per-sample strategies (vmap over single samples) and B=1 cases feed it."""
    sizes = sizes._replace(batch=PROBE_BATCH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(models.seed_for(model_def.name, sizes))
        built = models.instantiate(model_def, sizes, keep_compiled=True)
    model = models.eager_module(built)
    dtype, built_on = native_dtype(model), tuple(sorted({str(t.device) for t in [*model.parameters(),
                                                                                  *model.buffers()]}))
    model, probe_dtype = _as_probed(model)
    x = torch.randn(sizes.batch, sizes.in_dim, dtype=probe_dtype)  # [2, in]
    problem = models.run_problem(model, x, sizes.out_dim)
    if problem:
        raise models.ModelError(f"model {model_def.name}: {problem}{_device_hint(problem)}")
    problem = random_problem(model, x)
    if problem:  # every case would end in error, with this message
        raise models.ModelError(f"model {model_def.name}: {problem}")
    loose = tuple(f"{name}.{key}" if name else key for name, module in model.named_modules()
                  for key, value in vars(module).items() if isinstance(value, Tensor))
    return Probe(dtype=dtype, one_sample=models.run_problem(model, torch.randn(1, sizes.in_dim, dtype=probe_dtype),
                                                            sizes.out_dim),
                 training=model.training, graph=graph_problem(model, x), built_on=built_on, loose=loose,
                 scripted=isinstance(model, torch.jit.ScriptModule), compiled=models.is_compiled_module(built),
                 forward_error=_forward_error(model, x),
                 trainable=any(p.requires_grad for p in model.parameters()))


def random_problem(model: nn.Module, x: Tensor) -> str:
    """Why no reference can validate the model (its float64 copy gives two outputs for one input), "" when it can;
    "" too for a model that cannot run in float64 (its cases say so)."""
    import copy

    try:
        model64, x64 = copy.deepcopy(model).double(), x.double()
        with torch.no_grad():
            y = model64(x64)
            state = {name: b.clone() for name, b in model64.named_buffers()}
            again = model64(x64)
    except Exception:
        return ""
    # a NaN output is not randomness: its cases say it
    same = y.shape == again.shape and torch.allclose(y, again, rtol=0.0, atol=0.0, equal_nan=True)
    return "" if same else not_deterministic(why_not_deterministic(model64, state))


def not_deterministic(why: str) -> str:
    return (f"the model is not deterministic: two float64 forward passes on the same input differ ({why}); no "
            "reference can validate it. To measure it, return model.eval() from the factory (inference: dropout "
            "off, no state updated), or make its randomness a fixed input of the model")


def why_not_deterministic(model64: nn.Module, state: dict[str, Tensor]) -> str:
    """What makes two forward passes differ: dropout in training mode, a forward that updates buffers (`state`: the
    buffers between the two passes; spectral_norm's power iteration updates its vectors on every training-mode
    call), or else a random op."""
    random_layers = sorted({type(m).__name__ for m in model64.modules() if m.training and "Dropout" in
                            type(m).__name__})
    if random_layers:
        return f"{', '.join(random_layers)} in training mode, as the factory returned the model"
    updated = [name for name, b in model64.named_buffers() if name in state and not torch.equal(state[name], b)]
    if updated:
        listed = ", ".join(updated[:3]) + (f" and {len(updated) - 3} more" if len(updated) > 3 else "")
        return f"its forward updates its own buffers {listed}, as spectral_norm's power iteration does in training mode"
    return "a random op in its forward"


def precision_notes(name: str, probe: Probe) -> list[str]:
    """A note when the model computes below float32 inside: what its results are validated at, and why."""
    held = precision.tolerance_dtype(torch.float32, probe.forward_error)
    if held == torch.float32:
        return []
    return [f"model {name} computes below float32 inside (autocast, or a cast in forward): its float32 output is "
            f"{probe.forward_error:.2%} off its float64 copy's, and so is every strategy's result; they are validated "
            f"at {str(held).removeprefix('torch.')}'s tolerance"]


def _forward_error(model: nn.Module, x: Tensor) -> float:
    """precision.forward_error of the probed model against its float64 copy (0 where no copy can be made)."""
    import copy

    try:
        return precision.forward_error(model, x, copy.deepcopy(model).double(), x.double())
    except Exception:  # a model that cannot run in float64: its cases say so (the reference is float64)
        return 0.0


def _as_probed(model: nn.Module) -> tuple[nn.Module, torch.dtype]:
    """The model on the CPU, as built when it is float64 (it is measured so, and its forward may cast its input to
    its weights), else in float32; and the dtype of the input to probe it with."""
    if native_dtype(model) == torch.float64:
        return model.cpu(), torch.float64
    return model.float().cpu(), torch.float32


def _device_hint(problem: str) -> str:
    if "device" not in problem:
        return ""
    return ("; forward makes or keeps tensors on a fixed device: create them with device=x.device, or register them "
            "as buffers (self.register_buffer) so the run moves them with the model")


@dataclass(frozen=True)
class OwnSizes:
    in_dim: int
    out_dim: int
    source: str  # where in_dim came from: "IN_DIM=", or the layer that declares it


def parse_in_dim(spec: str) -> int | None:
    """IN_DIM=3 -> 3; "" -> None (the model's own); a one-line error for anything else."""
    if not spec:
        return None
    try:
        value = int(spec)
    except ValueError:
        value = 0
    if value <= 0:
        raise models.ModelError(f"IN_DIM={spec!r}: give the model's input width, a positive integer, e.g. IN_DIM=3")
    return value


def own_sizes(model_def: models.ModelDef, in_dim: int | None) -> OwnSizes:
    """The input and output width of a fixed-size model: IN_DIM= (`in_dim`), else what its first layer declares;
    the output width from model(x). A ModelError that says what to give when neither tells."""
    model, dtype = _as_probed(models.instantiate(model_def, Sizes(PROBE_BATCH, FIXED_HIDDEN, in_dim or 1, 1),
                                                 materialize=in_dim is not None))
    source = "IN_DIM="
    if in_dim is None:
        in_dim, source = declared_in_dim(model)
        if in_dim is None:
            raise models.ModelError(f"model {model_def.name} has fixed sizes and does not tell its input width "
                                    f"({source}): give it as IN_DIM=n, n the width of the (B, n) input model(x) "
                                    "takes")
    y, problem = _call(model, torch.randn(PROBE_BATCH, in_dim, dtype=dtype))
    if problem:  # a call that raised may have had the wrong width; one that returned a tuple had the right one
        hint = (f"; the width {in_dim} came from {source}: give the right one, IN_DIM=n"
                if source != "IN_DIM=" and " raised " in problem else "")
        raise models.ModelError(f"model {model_def.name}: {problem}{hint}")
    if y.dim() != 2 or y.shape[0] != PROBE_BATCH:
        squeezed = ("; one number per sample is out = 1: return it as (B, 1), e.g. y.unsqueeze(-1)"
                    if y.dim() == 1 and y.shape[0] == PROBE_BATCH else "")
        raise models.ModelError(f"model {model_def.name}: model(x) maps ({PROBE_BATCH}, {in_dim}) to {tuple(y.shape)}, "
                                f"expected ({PROBE_BATCH}, out): return one row of outputs per sample{squeezed}")
    return OwnSizes(in_dim, int(y.shape[1]), source)


def declared_in_dim(model: nn.Module) -> tuple[int | None, str]:
    """The input width the model's first layer with weights declares, and where it was read (or why not). A
    parameter of one number (a learned temperature or scale) declares no width and hides none: it is passed over."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return module.in_features, f"nn.Linear {name or 'model'}.in_features"
        if _scripted_linear(module):  # torch.jit.script or trace of an nn.Linear: its weight is (out, in)
            return module.weight.shape[1], f"TorchScript nn.Linear {name or 'model'}.weight"
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            return None, f"layer {name or 'model'} ({type(module).__name__}) is lazy: its first call sets its sizes"
        own = [key for key, value in module.named_parameters(recurse=False) if value.dim() > 0]
        if own:
            where = f"layer {name} ({type(module).__name__})" if name else f"the model's own parameter {own[0]}"
            return None, f"{where} comes before any nn.Linear and declares no flat input width"
    return None, "it has no nn.Linear layer"


def _scripted_linear(module: nn.Module) -> bool:
    return (isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") == "Linear"
            and getattr(module, "weight", None) is not None and module.weight.dim() == 2)


def _call(model: nn.Module, x: Tensor) -> tuple[Tensor | None, str]:
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:
        return None, f"model(x) on input {tuple(x.shape)} raised {type(exc).__name__}: {models.first_line(exc)}"
    if not isinstance(y, Tensor):
        return None, f"model(x) returned a {type(y).__name__}, expected a Tensor (B, out)"
    return y, ""


def graph_problem(model: nn.Module, x: Tensor) -> str:
    """Why autograd cannot differentiate model(x) with respect to x ("" when it can): the input transformed under
    torch.no_grad(), detached, or taken through numpy inside forward."""
    x = x.detach().clone().requires_grad_(True)
    try:
        y = model(x)
        grad = torch.autograd.grad(y.sum(), x, allow_unused=True)[0] if y.requires_grad else None
    except Exception:
        return ""  # run_problem reports a model that fails to run
    if grad is not None:
        return ""
    return ("model(x) does not depend on x for autograd: forward takes the input out of the graph (torch.no_grad(), "
            ".detach(), .item() or numpy), or does not use it; no strategy can differentiate it: compute forward "
            "from x with autograd enabled")


def device_notes(model_name: str, probe: Probe, devices: list[str]) -> list[str]:
    """Notes for a model built on a device the run does not measure on, and for tensors kept as plain attributes
    (neither parameters nor buffers): .to() neither moves nor casts them."""
    notes = []
    elsewhere = [d for d in probe.built_on if d not in devices and d.partition(":")[0] not in devices]
    if elsewhere:
        notes.append(f"model {model_name} is built on {', '.join(probe.built_on)}; the run measures it on "
                     f"{', '.join(devices)} (moved there, as DEVICES= says): DEVICES={elsewhere[0]} measures it "
                     "where it is built")
    if probe.loose:
        notes.append(f"model {model_name} keeps tensor(s) {', '.join(probe.loose[:3])} outside its parameters and "
                     "buffers: .to() neither moves nor casts them, so another device or dtype fails in forward; "
                     "register them with self.register_buffer(name, tensor)")
    return notes
