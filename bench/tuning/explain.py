"""tuned.explain(): what is known about a pick, most useful first — the model and input, the pick and its verdict,
where it came from, the race, the candidates timed once, the refused ones, and the line of code to use."""

from __future__ import annotations

import math

import torch
from torch import nn

from bench import stack_depth, stats
from bench.harness.runner import RETIME_MARGIN
from bench.schema import RESULT_NAME, fmt_margin, fmt_ratio, fmt_time
from bench.tuning import cache as tunecache
from bench.tuning.candidates import grouped
from bench.tuning.options import Settings
from bench.tuning.pick import Pick
from bench.tuning.race import between_process_sd

Signature = tuple[tuple[int, ...], torch.dtype, torch.device, bool]  # what a pick holds for: shape, dtype, device, mode


def explain(pick: Pick, model: nn.Module, settings: Settings, signature: Signature) -> str:
    """The short text of tuned.explain(): what is known about this pick, most useful first."""
    shape, dtype, device, _ = signature
    lines = [f"autotune · {tunecache.describe(model)} · x {tuple(shape)} {str(dtype).removeprefix('torch.')} on "
             f"{device} ({tunecache.device_name(device)}) · {settings.what} · torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads",
             f"pick: {pick.strategy} — {_verdict_text(pick)}",
             _origin(pick)]
    lines += [f"note: {text}" for text in (pick.context, pick.note) if text]
    lines += _race_lines(pick) + _timed_once(pick)
    if pick.refused:
        lines += ["refused:", *grouped(pick.refused)]
    depth = stack_depth.load_reference()  # how the time grows when called from deep in a framework (bench depth)
    lines += [f"stack depth: {text}" for n in dict.fromkeys([pick.strategy, *pick.raced])
              if (text := stack_depth.advice_for(n, depth))]
    name = RESULT_NAME.get(settings.quantity, "out")
    lines.append(f'use: {name} = tuned(x), or {name} = strategies.REGISTRY["{pick.strategy}"](model, x'
                 + (", create_graph=True)" if settings.mode == "train" else ")"))
    return "\n".join(lines)


def _origin(pick: Pick) -> str:
    """Where the pick comes from: the cache, a run, or tuned here (and how)."""
    if pick.source == "cache":
        return f"from the cache {pick.where}: tuned earlier in {pick.seconds:.2f} s; nothing validated or timed now"
    if pick.source == "results":
        return (f"from the run {pick.where}: it measured {pick.measured} at this shape; nothing timed here, the pick "
                "validated on example_x against the float64 reference")
    where = f"cache miss in {pick.where}, saved there" if pick.where else "no cache (cache=False)"
    raced = (f"{len(pick.raced)} raced together in {pick.rounds} interleaved sweeps (a run's timing)"
             if pick.raced else "no race")
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in pick.phases.items() if name != "start")
    return (f"tuned in {pick.seconds:.2f} s (budget {pick.budget_s:g} s{'; ' + parts if parts else ''}): "
            f"{pick.validated} candidate{'' if pick.validated == 1 else 's'} validated against the float64 reference, "
            f"{len(pick.times)} timed, {raced}; {where}")


def _race_lines(pick: Pick) -> list[str]:
    """The raced candidates, fastest first: time per call, rounds kept, and how each compares with the pick."""
    if not pick.raced:
        return []
    lines = ["raced (time per call, rounds kept, time / the pick's with its 95% interval; the verdict rests on this "
             f"one process: each interval assumes a between-process sd of "
             f"{between_process_sd(pick.contenders or pick.raced):.1%}, as measured by the project's runs on their "
             "VM, not here):"]
    for name in sorted(pick.raced, key=lambda n: pick.times.get(n, math.inf)):
        lines.append(f"  {name:<26} {fmt_time(pick.times.get(name)):>9} {pick.kept.get(name, 0):>4}  "
                     f"{_versus(pick, name)}")
    return lines


def _timed_once(pick: Pick) -> list[str]:
    """The valid candidates that were not raced, with their time against the fastest single call."""
    others = sorted((n for n in pick.times if n not in pick.raced and n != pick.strategy), key=pick.times.__getitem__)
    if not others:
        return []
    basis = pick.first or pick.times
    fastest = min(basis.values())
    label = "measured in the run" if pick.source == "results" else \
        f"timed once, not raced (over {fmt_margin(RETIME_MARGIN)} the fastest single call)"
    return [f"{label}: " + ", ".join(f"{n} {fmt_time(pick.times[n])} ({fmt_ratio(basis[n] / fastest)})"
                                     for n in others)]


def _verdict_text(pick: Pick) -> str:
    if pick.verdict == "tie":
        return (f"tie with {', '.join(pick.tied_with)}: not surely more than {fmt_margin(stats.TIE_MARGIN)} slower, "
                "either is a good choice")
    if len(pick.contenders or pick.raced) > 1:  # a pick cached before `contenders` was kept: all raced
        return f"winner: every other contender is surely more than {fmt_margin(stats.TIE_MARGIN)} slower"
    if pick.raced:
        return (f"winner: every other raced candidate is surely more than {fmt_margin(stats.CONTENDER_MARGIN)} "
                "slower")
    if pick.source == "results":
        return "winner in the run's verdict" if not pick.note else "the next fastest valid one measured in the run"
    if len(pick.times) == 1:
        return "winner: the only valid strategy"
    return f"winner: the only one within {fmt_margin(RETIME_MARGIN)} of the fastest single call"


def _versus(pick: Pick, name: str) -> str:
    """A raced candidate against the pick: the verdict's ratio for a contender, the ratio of medians for one that
    was screened out."""
    if name == pick.strategy:
        return "the pick"
    if name in pick.ratios:
        ratio, low, high = (f"{v:.2f}" if math.isfinite(v) else "?" for v in stats.as_interval(pick.ratios[name]))
        return f"×{ratio} [{low}–{high}]"  # "?": unknown (a cache or a run that wrote it as null)
    if name in pick.times and pick.strategy in pick.times:
        return (f"{fmt_ratio(pick.times[name] / pick.times[pick.strategy])}, screened out: surely over "
                f"{fmt_margin(stats.CONTENDER_MARGIN)} the fastest")
    return ""
