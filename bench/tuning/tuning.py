"""One pick for inputs shaped like x: from a measured run (results=), else the cache, else tuned here: every
candidate validated on x, one call of each valid one timed, those near the fastest raced for what is left of the
budget."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from bench.harness import timing
from bench.tuning import cache as tunecache
from bench.tuning import candidates, race, runs
from bench.tuning.options import AutotuneError, Settings
from bench.tuning.pick import Pick
from strategies import REGISTRY


def tune(model: nn.Module, x: Tensor, settings: Settings) -> Pick:
    """The pick for inputs shaped like x: from a measured run (results=), else the cache, else validated and raced."""
    start = time.perf_counter()
    context = ""
    with buffers_kept(model), torch.enable_grad():
        out_dim = candidates.out_dim_of(model, x)
        if settings.results:
            pick, context = runs.from_results(model, x, out_dim, settings)
            if pick is not None:
                pick.seconds = time.perf_counter() - start
                return pick
        key = tunecache.key(model, x, settings.mode, settings.candidates)
        saved = tunecache.TuneCache(settings.folder)
        hit = saved.get(key)
        pick = Pick.from_saved(hit, str(saved.path)) if hit is not None else None
        if pick is None:
            pick = measured(model, x, out_dim, settings, start)
            saved.put(key, pick.saved())
            pick.where = str(saved.path or "")
    pick.context = context
    return pick


def measured(model: nn.Module, x: Tensor, out_dim: int, settings: Settings, start: float) -> Pick:
    """Validate every candidate on x, time one call of each valid one, race those near the fastest for what is left
    of the budget; AutotuneError when none is valid."""
    phases = {"start": time.perf_counter() - start}  # what came before: the model's output, the cache lookup
    ref = candidates.reference_of(model, x, settings.mode, settings.quantity)
    refused = {name: why for name in settings.candidates
               if (why := candidates.refusal(REGISTRY[name], out_dim, ref.coupled, settings.mode))}
    candidates.warm_up([n for n in settings.candidates if n not in refused], x, settings.mode)
    phases["reference"] = time.perf_counter() - start - sum(phases.values())
    first = first_calls(model, x, out_dim, settings, ref, refused)
    if not first:
        raise AutotuneError(candidates.no_valid_message(settings, refused, x, out_dim, ref.coupled))
    validated = sum(1 for n in settings.candidates if n in first or refused.get(n, "").startswith("wrong"))
    pick = Pick(strategy=min(first, key=first.__getitem__), verdict="winner", times=dict(first), first=first,
                refused=refused, validated=validated, budget_s=settings.budget_s, phases=phases)
    phases["validation"] = time.perf_counter() - start - sum(phases.values())
    near = race.racers(first)
    if len(near) > 1:
        entries = [timing.Entry(n, candidates.call_of(n, model, x, settings.mode), first[n]) for n in near]
        race.raced(pick, entries, race.window(settings.budget_s, time.perf_counter() - start))
        phases["race"] = time.perf_counter() - start - sum(phases.values())
    pick.seconds = time.perf_counter() - start
    return pick


def first_calls(model: nn.Module, x: Tensor, out_dim: int, settings: Settings, ref: candidates.Reference,
                refused: dict[str, str]) -> dict[str, float]:
    """Each candidate not refused yet: its first call validated (a failure goes into `refused` with its reason),
    then one call timed. Returns the valid candidates' single-call seconds, in the order of the candidates."""
    first: dict[str, float] = {}
    case = candidates.case_of(x, out_dim, settings.mode, settings.quantity)
    for name in settings.candidates:
        if name in refused:
            continue
        limit = candidates.first_call_limit(REGISTRY[name], first, settings.budget_s)
        why = candidates.first_call(REGISTRY[name], model, x, ref, case, *limit)
        if why:
            refused[name] = why
            continue
        first[name] = candidates.one_call(candidates.call_of(name, model, x, settings.mode))
    return first


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Tuning calls the model hundreds of times: its buffers (BatchNorm's running statistics) are put back after."""
    kept = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)
