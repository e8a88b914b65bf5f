"""torch.compile of an eager strategy (not a strategy: the leading underscore keeps it out of the registry).

The compiled function is made on first use, so importing `strategies` does not import dynamo. It is compiled with
dynamic=False: one graph per model and shape, which the harness compiles in the case's first call (timed apart as
setup_s) after clearing dynamo's cache for the new shape (bench/harness/compiling.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.schema import COMPILED_SUFFIX
from strategies import Strategy, Unsupported, register


def compiled(eager: Strategy) -> Callable[[nn.Module, Tensor], Tensor]:
    """fn(model, x) running torch.compile(eager.fn)."""

    @functools.cache
    def compiled_fn() -> Callable[..., Tensor]:
        return torch.compile(eager.fn, dynamic=False)

    def run(model: nn.Module, x: Tensor) -> Tensor:
        import torch._dynamo

        try:
            return compiled_fn()(model, x)
        except (torch._dynamo.exc.TorchDynamoException, NotImplementedError) as exc:
            # dynamo cannot trace this model through the transform: the strategy does not apply, say why
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
            # "backend='inductor' raised:" announces the cause on the next line
            first = (f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0])[:200]
            raise Unsupported(f"torch.compile cannot compile {eager.name} for this model: {type(exc).__name__}: "
                              f"{first}") from None

    return run


def register_compiled(eager: Strategy) -> Strategy:
    """Register torch.compile(eager) as `<eager>_compiled`: same cost and memory, samples assumed alike, no training
    through it (torch.compile does not support double backward)."""
    run = compiled(eager)

    def fn(model: nn.Module, x: Tensor) -> Tensor:
        return run(model, x)

    fn.__doc__ = f"torch.compile({eager.name}), compiled for each shape (compile time apart, as setup_s)."
    return register(name=f"{eager.name}{COMPILED_SUFFIX}", quantity=eager.quantity,
                    independent_samples=eager.independent_samples, compiled=True, cost=f"{eager.cost}, compiled",
                    memory_estimate=eager.memory_estimate)(fn)
