"""Per-sample derivative strategies: one module per strategy, collected into ``REGISTRY``.

A strategy maps ``(model, x)`` with ``x: (B, in)`` to a per-sample derivative of the model, the ``quantity`` it
declares: the Jacobian ``J: (B, out, in)`` (the default; or ``J.sum(1): (B, in)`` when it declares
``returns="output_sum"``), the Hessian ``H: (B, out, in, in)`` with ``H[b, o, i, j] = d² y[b, o] / dx[b, i] dx[b, j]``,
or the Laplacian ``(B, out)``, the trace of each output's Hessian. A strategy with ``estimator=True`` returns a
stochastic estimate of its quantity: recorded with its measured error, never a winner against exact strategies.
A strategy that declares ``differentiable=True`` also takes ``create_graph=True`` and then returns a result that can
be backpropagated to the model's parameters (training through the Jacobian, or a PINN step through the Laplacian);
with ``create_graph=False`` (the default) it carries no graph. Modules in this package register
themselves with ``@register(...)``; third-party packages add strategies through the entry-point group
``jacobench.strategies`` whose objects are ``Strategy`` instances (the entry point's name becomes the strategy's name).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

import torch
from torch import Tensor, nn

from bench.schema import QUANTITIES

__all__ = ["QUANTITIES", "REGISTRY", "Strategy", "Unsupported", "names", "register", "load_entry_points"]

ENTRY_POINT_GROUP = "jacobench.strategies"

Quantity = Literal["jacobian", "hessian", "laplacian"]

# fn(model, x: (B, in)[, create_graph=False]) -> (B, out, in) or (B, in) for a Jacobian, (B, out, in, in) for a
# Hessian, (B, out) for a Laplacian
StrategyFn = Callable[..., Tensor]
# memory_estimate(sizes, dtype) -> peak bytes of one call beyond the model and the input (sizes: bench.schema.Sizes,
# the named tuple (batch, hidden, in_dim, out_dim))
MemoryEstimate = Callable[[tuple[int, int, int, int], torch.dtype], int]


class Unsupported(Exception):
    """Raised by a strategy for a model or input it cannot handle; the harness records ``unsupported``."""


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: StrategyFn
    returns: Literal["jacobian", "output_sum"] = "jacobian"
    independent_samples: bool = False  # the strategy needs independent samples: it is right only when output row b
    # depends on input row b alone (per-sample tricks); False for strategies exact on coupled samples too
    summary: str = ""  # one line for reports: the API used
    cost: str = ""  # asymptotic cost in B, H, in, out
    memory_estimate: MemoryEstimate | None = None
    differentiable: bool = False  # fn(model, x, create_graph=True) gives a J that backpropagates to the parameters
    compiled: bool = False  # fn compiles (torch.compile) on its first call for a shape: the harness times that apart
    quantity: Quantity = "jacobian"  # what fn returns: J (B, out, in), H (B, out, in, in) or the Laplacian (B, out)
    estimator: bool = False  # fn returns a stochastic estimate of its quantity, not the exact value
    closed_form: bool = False  # a hand-derived formula for one model family: the limit shown beside the race
    peer: str = ""  # another framework's strategy (e.g. "jax") on the same weights: shown beside the race

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}, not {self.quantity!r}")
        if self.returns != "jacobian" and self.quantity != "jacobian":
            raise ValueError(f"returns={self.returns!r} is a Jacobian's variant; a {self.quantity} strategy returns "
                             "its quantity whole")

    def __call__(self, model: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
        if create_graph:
            if not self.differentiable:
                raise Unsupported("not differentiable: its J keeps no graph to the parameters to train through")
            return self.fn(model, x, create_graph=True)
        return self.fn(model, x)


REGISTRY: dict[str, Strategy] = {}


def names(quantity: Quantity = "jacobian") -> list[str]:
    """The registered strategies of one quantity, in registration order."""
    return [n for n, s in REGISTRY.items() if s.quantity == quantity]


def register(
    *,
    name: str | None = None,
    returns: Literal["jacobian", "output_sum"] = "jacobian",
    independent_samples: bool = False,
    cost: str = "",
    memory_estimate: MemoryEstimate | None = None,
    differentiable: bool = False,
    compiled: bool = False,
    quantity: Quantity = "jacobian",
    estimator: bool = False,
    closed_form: bool = False,
    peer: str = "",
) -> Callable[[StrategyFn], Strategy]:
    """Decorator: turn ``fn(model, x)`` into a ``Strategy`` named after its module and add it to ``REGISTRY``."""
    if returns not in ("jacobian", "output_sum"):
        raise ValueError(f"returns must be 'jacobian' or 'output_sum', not {returns!r}")

    def decorate(fn: StrategyFn) -> Strategy:
        doc = (fn.__doc__ or "").strip().splitlines()
        strategy = Strategy(
            name=name or fn.__module__.rsplit(".", 1)[-1],
            fn=fn,
            returns=returns,
            independent_samples=independent_samples,
            summary=doc[0] if doc else "",
            cost=cost,
            memory_estimate=memory_estimate,
            differentiable=differentiable,
            compiled=compiled,
            quantity=quantity,
            estimator=estimator,
            closed_form=closed_form,
            peer=peer,
        )
        _add(strategy)
        return strategy

    return decorate


def _add(strategy: Strategy) -> None:
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    REGISTRY[strategy.name] = strategy


# The order strategies appear in tables: from the naive to the closed form. Files not listed come after, by name.
# A derived strategy (compiled, trace) comes after the strategy it derives from: its module imports that one.
_BUILTIN_ORDER = (
    "grad_summed",
    "grad_loop",
    "grad_batched",
    "jacobian_diagonal",
    "jacobian_sum",
    "func_sum_jacrev",
    "vmap_jacrev",
    "vmap_jacrev_chunked",
    "vmap_jacfwd",
    "vmap_jacfwd_chunked",
    "jvp_loop",
    "jvp_batched",
    "linearize_batched",
    "func_sum_jacrev_compiled",
    "vmap_jacrev_compiled",
    "jvp_batched_compiled",
    "analytic",
    # second order (quantity "hessian", then "laplacian"): from the naive to the closed form, each Hessian's trace
    "hessian_grad_loop",
    "hessian_sum",
    "hessian_vmap_jacrev_jacrev",
    "hessian_vmap_hessian",
    "hessian_vmap_jacfwd_jacfwd",
    "hessian_hvp_vmapped",
    "hessian_analytic",
    "laplacian_trace_grad_loop",
    "laplacian_trace_sum",
    "laplacian_trace_vmap_jacrev_jacrev",
    "laplacian_trace_vmap_hessian",
    "laplacian_trace_vmap_jacfwd_jacfwd",
    "laplacian_trace_hvp_vmapped",
    "laplacian_hvp_loop",
    "laplacian_jvp_jvp",
    "laplacian_hutchinson",
    "laplacian_trace_vmap_jacrev_jacrev_compiled",
    "laplacian_jvp_jvp_compiled",
    "laplacian_trace_analytic",
    "laplacian_analytic",
)


def _import_builtins() -> None:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    ordered = [n for n in _BUILTIN_ORDER if n in found] + sorted(found - set(_BUILTIN_ORDER))
    for module_name in ordered:
        importlib.import_module(f"{__name__}.{module_name}")


def load_entry_points(entry_points: list[metadata.EntryPoint] | None = None) -> list[str]:
    """Register third-party strategies; return their names. A broken or clashing plugin is skipped with a warning."""
    if entry_points is None:
        entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    added = []
    for ep in entry_points:
        obj = _safe_load(ep)  # importing the plugin's module may already register it through @register
        if obj is None:
            continue
        if not isinstance(obj, Strategy):
            warnings.warn(f"jacobench: entry point {ep.name!r} ({ep.value}) is not a Strategy; skipped", stacklevel=2)
            continue
        if REGISTRY.get(ep.name) is not obj:
            if REGISTRY.get(obj.name) is obj:
                del REGISTRY[obj.name]  # registered by its decorator under its module stem: rename
            if ep.name in REGISTRY:
                warnings.warn(f"jacobench: plugin strategy {ep.name!r} clashes with a built-in; skipped", stacklevel=2)
                continue
            _add(dataclasses.replace(obj, name=ep.name))
        added.append(ep.name)
    return added


def _safe_load(ep: metadata.EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must not break the suite
        warnings.warn(f"jacobench: cannot load plugin strategy {ep.name!r}: {exc}", stacklevel=3)
        return None


_import_builtins()
load_entry_points()
