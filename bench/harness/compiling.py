"""torch.compile in a benchmark: compile once per shape, time the compiling apart, never time a silent recompile.

Dynamo caches compiled code per function and guards it on the model and input; a new shape brings a new model, so
every compiled strategy compiles again, once, in its first call (the validation call, timed as `setup_s`). The cache
is cleared when a new shape starts, so a run never reaches dynamo's recompile limit (past it, dynamo runs the
function eagerly without a word). While a compiled case is timed, a recompile is an error, not a slow round.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


def reset() -> None:
    """Forget every compiled graph: the next call of a compiled strategy compiles for the new shape."""
    import torch._dynamo

    torch._dynamo.reset()


class Recompiled(Exception):
    """A compiled strategy compiled again while it was being timed."""


@contextlib.contextmanager
def no_recompile(enabled: bool = True) -> Iterator[None]:
    """Raise Recompiled if dynamo compiles anything inside (its own error_on_recompile, and a count of the graphs it
    built, for compiles that are not recompiles of a cached function)."""
    if not enabled:
        yield
        return
    import torch._dynamo
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            yield
    except torch._dynamo.exc.RecompileError as exc:
        raise Recompiled(f"recompiled while timing: {str(exc).strip().splitlines()[0][:200]}") from None
    if counters["stats"]["unique_graphs"] != graphs:
        raise Recompiled("compiled a new graph while timing")


GRAPH_BREAK = "torch.compile broke the graph (that part of the call runs eagerly)"


@contextlib.contextmanager
def graph_breaks(enabled: bool = True) -> Iterator[list[str]]:
    """The graph breaks dynamo met while compiling inside, one line each ("GRAPH_BREAK: <dynamo's reason>"): a compiled
    strategy that is timed as partly eager says so in its case. Dynamo counts them by reason; one of them
    (`Tensor.item()` in a user's model) it also logs as a warning, 27 lines into the run's output per compile with
    nothing to tie them to a case (the worker leaves that logger out)."""
    found: list[str] = []
    if not enabled:
        yield found
        return
    from torch._dynamo.utils import counters

    before = dict(counters["graph_break"])
    try:
        yield found
    finally:
        found += [f"{GRAPH_BREAK}: {reason.strip().splitlines()[0][:200]}"
                  for reason, count in counters["graph_break"].items() if count > before.get(reason, 0)]


def inductor_cache() -> dict[str, object]:
    """Where inductor keeps compiled kernels and whether it held any when the run started (a warm cache makes
    setup_s much shorter than a first compile on a fresh machine)."""
    try:
        folder = Path(_cache_dir_utils().cache_dir())
    except Exception:  # an older or newer torch: say what is unknown rather than guess
        return {"dir": None, "warm": None}
    warm = folder.is_dir() and any(os.scandir(folder))
    return {"dir": str(folder), "warm": warm}


def _cache_dir_utils() -> ModuleType:
    """torch/_inductor/runtime/cache_dir_utils.py, loaded from its file: a torch-free module ("without torch
    dependencies", it says), but importing it by name runs torch._inductor's __init__, which imports dynamo (1 s of
    every run's start, for one folder name)."""
    import torch

    path = Path(torch.__file__).parent / "_inductor" / "runtime" / "cache_dir_utils.py"
    spec = importlib.util.spec_from_file_location("_jacobench_inductor_cache_dir_utils", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
